"""Classify an upstream HTTP answer into one of the SPEC §5 outcomes.

Pure: no I/O, no clock. `classify_response` takes the wall-clock time only to turn an
HTTP-date `Retry-After` into seconds. Transport failures (refused, reset, silent) are
classified by exception type in the I/O layer, which uses the ready-made verdicts
`CONNECT_ERROR_VERDICT`, `TIMEOUT_VERDICT` and `BAD_RESPONSE_VERDICT`.

What a verdict carries besides its outcome:

    retry_after          how long the upstream asked us to wait (non-2xx answers only): its
                         headers, else for a 429 Google's `RetryInfo` in the body
    quota_exhausted      a 429/402 whose error says the quota or credits are gone
    preemptive_cooldown  `x-ratelimit-remaining-*: 0` on any answer: wait for the reset

Error bodies come in every shape (OpenAI JSON, a bare string, HTML from a load balancer,
megabytes of junk); nothing here raises on any of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum

import orjson

MAX_COOLDOWN = 86400.0
"""Upstream wait hints are honoured as given, but never beyond a day."""

# Error bodies are small; past these sizes the body is not an OpenAI error object, so only
# its beginning is worth a look.
_MAX_JSON_BYTES = 1024 * 1024
_MAX_SCAN_BYTES = 64 * 1024

# A plain number this large is no duration (31 years): some providers send the reset as an
# epoch timestamp instead, in seconds or milliseconds.
_EPOCH_SECONDS = 1e9
_EPOCH_MILLISECONDS = 1e12


class Outcome(StrEnum):
    """The §5 outcome labels; the values are the metric label vocabulary."""

    OK = "ok"
    CONTEXT_LENGTH = "context_length"
    CLIENT_ERROR = "client_error"
    AUTH_ERROR = "auth_error"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CONNECT_ERROR = "connect_error"
    TIMEOUT = "timeout"
    BAD_RESPONSE = "bad_response"


PROVIDER_FAILURES: frozenset[Outcome] = frozenset(
    {Outcome.SERVER_ERROR, Outcome.CONNECT_ERROR, Outcome.TIMEOUT, Outcome.BAD_RESPONSE}
)
"""Outcomes that count against the endpoint's breaker."""

KEY_FAILURES: frozenset[Outcome] = frozenset(
    {Outcome.AUTH_ERROR, Outcome.FORBIDDEN, Outcome.RATE_LIMITED}
)
"""Outcomes specific to the key used: another key of the same provider may succeed."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one upstream answer means for the request, the key and the endpoint."""

    outcome: Outcome
    retry_after: float | None = None
    quota_exhausted: bool = False
    preemptive_cooldown: float | None = None


CONNECT_ERROR_VERDICT = Verdict(Outcome.CONNECT_ERROR)
TIMEOUT_VERDICT = Verdict(Outcome.TIMEOUT)
BAD_RESPONSE_VERDICT = Verdict(Outcome.BAD_RESPONSE)

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "context_window_exceeded",
    "context length",
    "context window",
    "maximum model length",
    "prompt is too long",
)
# A spent quota is told apart from a throttle by what the error says, never by bare words:
# "billing", "credit" or "quota" also appear in links and upsell lines of ordinary
# per-minute 429s (Groq: "Need more tokens? Upgrade to Dev Tier today at .../settings/billing").
# Codes and types that only ever mean the money or the allowance is gone:
_QUOTA_CODES = (
    "insufficient_quota",  # OpenAI
    "billing_hard_limit_reached",  # OpenAI
    "billing_not_active",  # OpenAI
    "insufficient_balance",
)
# Phrases that say so, whatever else the message says:
_SPENT_PHRASES = (
    "insufficient balance",
    "insufficient credits",
    "credit balance is too low",  # Anthropic
    "billing hard limit",
    # A daily allowance: Groq "requests per day (RPD)", "tokens per day (TPD)";
    # OpenRouter "free-models-per-day".
    "per day",
    "per-day",
    "per_day",
    "perday",  # Google's quota ids: GenerateRequestsPerDayPerProjectPerModel-FreeTier
    "daily limit",
    "daily quota",
)
# Phrases that say a quota ran out without saying which: Google uses them for per-minute
# windows too ("Quota exceeded for ...requests_per_minute..."), so a named minute window wins.
_QUOTA_PHRASES = (
    "exceeded your current quota",
    "exceeded your quota",
    "quota exceeded",
    "insufficient quota",
)
_MINUTE_WINDOW = ("per minute", "per_minute", "perminute", "(tpm)", "(rpm)")
_SPENT_MARKERS = _QUOTA_CODES + _SPENT_PHRASES
_URL = re.compile(r"https?://\S+")
# Statuses under which providers report an over-long prompt (400 is the OpenAI one; some
# servers answer 413 or 422 for the same thing).
_CONTEXT_STATUSES = frozenset({400, 413, 422})
_QUOTA_STATUSES = frozenset({402, 429})

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


def classify_response(
    status: int, headers: Mapping[str, str], body: bytes, wall_now: float
) -> Verdict:
    """The verdict on an upstream answer with this status, headers and (error) body."""
    ok = 200 <= status < 300
    return Verdict(
        outcome=_outcome(status, body),
        # A 2xx carries reset headers on every answer; they are no request to wait.
        retry_after=None if ok else _wait_hint(status, headers, body, wall_now),
        quota_exhausted=status in _QUOTA_STATUSES and is_quota_exhausted(body),
        preemptive_cooldown=_preemptive_cooldown(headers, wall_now),
    )


def _wait_hint(
    status: int, headers: Mapping[str, str], body: bytes, wall_now: float
) -> float | None:
    seconds = retry_after_seconds(headers, wall_now)
    if seconds is None and status == 429:
        seconds = body_retry_delay(body)
    return seconds


def body_retry_delay(body: bytes) -> float | None:
    """Google's wait hint, which it sends in the error body instead of a header:
    `{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "45s"}` among
    the error's `details`. Capped at a day; None when there is none."""
    for detail in _google_details(_json_error(body)):
        delay = detail.get("retryDelay")
        if isinstance(delay, str):
            seconds = parse_duration(delay)
            if seconds is not None:
                return min(seconds, MAX_COOLDOWN)
    return None


def _outcome(status: int, body: bytes) -> Outcome:
    if 200 <= status < 300:
        return Outcome.OK
    if status in _CONTEXT_STATUSES and _mentions(body, _CONTEXT_MARKERS):
        return Outcome.CONTEXT_LENGTH
    if status == 401:
        return Outcome.AUTH_ERROR
    if status in (402, 403):
        return Outcome.FORBIDDEN
    if status == 404:
        return Outcome.NOT_FOUND
    if status in (408, 429):
        return Outcome.RATE_LIMITED
    if 400 <= status < 500:
        return Outcome.CLIENT_ERROR
    if 500 <= status < 600:
        return Outcome.SERVER_ERROR
    return Outcome.BAD_RESPONSE


def is_quota_exhausted(body: bytes) -> bool:
    """Whether an error body says the key's quota, credits or daily allowance is spent."""
    # Links name pages ("/settings/billing"), not this error.
    texts = [_URL.sub(" ", text) for text in _error_texts(body)]
    if any(marker in text for text in texts for marker in _SPENT_MARKERS):
        return True
    # The window may be named in another field than the phrase (Google: the message says
    # "exceeded your current quota", the QuotaFailure's ids say "...PerMinute...").
    said_quota = any(p in text for text in texts for p in _QUOTA_PHRASES)
    return said_quota and not any(m in text for text in texts for m in _MINUTE_WINDOW)


def _mentions(body: bytes, markers: tuple[str, ...]) -> bool:
    texts = _error_texts(body)
    return any(marker in text for text in texts for marker in markers)


def _error_texts(body: bytes) -> list[str]:
    """The lower-cased strings an error body describes itself with.

    For JSON only the descriptive fields are read (code, type, message, ...), so that
    unrelated content cannot match; any other body is read as text.
    """
    if not body:
        return []
    if len(body) <= _MAX_JSON_BYTES:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            return [text.lower() for text in _descriptive_strings(document)]
    return [body[:_MAX_SCAN_BYTES].decode("utf-8", "replace").lower()]


def _json_error(body: bytes) -> object:
    """The parsed error body (Google's one-element list unwrapped); None if not JSON."""
    if not body or len(body) > _MAX_JSON_BYTES:
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(document, list) and document:
        document = document[0]
    return document


def _google_details(document: object) -> list[dict[str, object]]:
    """The `error.details` objects of a Google-style error (RetryInfo, QuotaFailure, ...)."""
    error = document.get("error") if isinstance(document, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    if not isinstance(details, list):
        return []
    return [d for d in details if isinstance(d, dict)]


def _quota_ids(document: object) -> list[str]:
    """The ids of the quotas a Google `QuotaFailure` says were exceeded: they name the window
    (`...PerMinute...`, `...PerDay...`) that the message, the same for both, does not."""
    ids = []
    for detail in _google_details(document):
        violations = detail.get("violations")
        if isinstance(violations, list):
            for violation in violations:
                if isinstance(violation, dict):
                    ids += [
                        v
                        for k in ("quotaId", "quotaMetric")
                        if isinstance(v := violation.get(k), str)
                    ]
    return ids


_DESCRIPTIVE_FIELDS = ("code", "type", "message", "status", "detail")


def _descriptive_strings(document: object) -> list[str]:
    # Google-style errors come wrapped in a one-element list.
    if isinstance(document, list) and document:
        document = document[0]
    if isinstance(document, str):
        return [document]
    if not isinstance(document, dict):
        return []
    found = [v for f in _DESCRIPTIVE_FIELDS if isinstance(v := document.get(f), str)]
    error = document.get("error")
    if isinstance(error, str):
        found.append(error)
    elif isinstance(error, dict):
        found.extend(v for f in _DESCRIPTIVE_FIELDS if isinstance(v := error.get(f), str))
        found.extend(_quota_ids(document))
    return found


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


def _preemptive_cooldown(headers: Mapping[str, str], wall_now: float) -> float | None:
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
