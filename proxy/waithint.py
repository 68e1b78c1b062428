"""How long an upstream asks for a rest, read from its headers.

Pure, with the wall clock passed in (`wall_now`) for HTTP dates and epoch timestamps. Every
provider spells it differently: `retry-after-ms`, `Retry-After` in seconds or as an HTTP date,
OpenAI's `x-ratelimit-reset-*` as Go durations (`6m0s`), others as epoch seconds or
milliseconds. Anything unreadable counts as no hint; nothing here raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

MAX_COOLDOWN = 86400.0
"""Upstream wait hints are honoured as given, but never beyond a day."""


# A plain number this large is no duration (31 years): some providers send the reset as an
# epoch timestamp instead, in seconds or milliseconds.
_EPOCH_SECONDS = 1e9
_EPOCH_MILLISECONDS = 1e12


_PLAIN_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)")
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (`1s`, `6m0s`, `20ms`, `1h2m3.5s`) or a plain number.

    None for anything else, negative or not finite.
    """
    text = text.strip().lower()
    if _PLAIN_NUMBER.fullmatch(text):
        return _finite(float(text))
    if not _DURATION.fullmatch(text):
        return None
    total = sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text)
    )
    return _finite(total)


def retry_after_seconds(headers: Mapping[str, str], wall_now: float) -> float | None:
    """How long the upstream asks us to wait, from the first usable header, capped at a day.

    Preference: `retry-after-ms`, `Retry-After` (seconds or an HTTP date),
    `x-ratelimit-reset-requests`, `x-ratelimit-reset-tokens`. An unparsable header is
    skipped as if absent.
    """
    for name, parse in _WAIT_HEADERS:
        raw = header(headers, name)
        if raw is None:
            continue
        seconds = parse(raw, wall_now)
        if seconds is not None:
            return min(seconds, MAX_COOLDOWN)
    return None


def preemptive_cooldown(headers: Mapping[str, str], wall_now: float) -> float | None:
    """How long to rest a key whose window is used up, before it earns a 429."""
    longest: float | None = None
    for kind in ("requests", "tokens"):
        remaining = _number(header(headers, f"x-ratelimit-remaining-{kind}"))
        if remaining is None or remaining > 0:
            continue
        raw = header(headers, f"x-ratelimit-reset-{kind}")
        seconds = None if raw is None else _reset_seconds(raw, wall_now)
        if seconds is not None:
            longest = seconds if longest is None else max(longest, seconds)
    if longest is None or longest <= 0:
        return None
    return min(longest, MAX_COOLDOWN)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """`headers[name]` whatever its casing (`name` is given in lower case)."""
    value = headers.get(name)
    if value is not None:
        return value
    # A CIMultiDict already matched above; a plain dict may hold any casing.
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def _retry_after_ms(raw: str, wall_now: float) -> float | None:
    millis = _non_negative(raw)
    return None if millis is None else millis / 1000.0


def _retry_after(raw: str, wall_now: float) -> float | None:
    seconds = _non_negative(raw)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(raw.strip())
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # RFC 9110 dates are GMT
        epoch = when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return _finite(max(0.0, epoch - wall_now))


def _reset_seconds(raw: str, wall_now: float) -> float | None:
    number = _non_negative(raw)
    if number is not None and number >= _EPOCH_MILLISECONDS:
        return max(0.0, number / 1000.0 - wall_now)
    if number is not None and number >= _EPOCH_SECONDS:
        return max(0.0, number - wall_now)
    return parse_duration(raw)


_WAIT_HEADERS: tuple[tuple[str, Callable[[str, float], float | None]], ...] = (
    ("retry-after-ms", _retry_after_ms),
    ("retry-after", _retry_after),
    ("x-ratelimit-reset-requests", _reset_seconds),
    ("x-ratelimit-reset-tokens", _reset_seconds),
)


def _non_negative(raw: str) -> float | None:
    text = raw.strip()
    return _finite(float(text)) if _PLAIN_NUMBER.fullmatch(text) else None


def _number(raw: str | None) -> float | None:
    """A signed finite number, or None (a remaining count may come as `-1` when overdrawn)."""
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
