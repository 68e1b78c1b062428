"""Classify an upstream HTTP answer into one of the SPEC §5 outcomes.

Pure: no I/O, no clock. `classify_response` takes the wall-clock time only for the wait
hints `proxy.waithint` reads (an HTTP-date `Retry-After`, an epoch reset). Transport
failures (refused, reset, silent) are classified by exception type in the I/O layer, which
uses the ready-made verdicts `CONNECT_ERROR_VERDICT`, `TIMEOUT_VERDICT` and
`BAD_RESPONSE_VERDICT`.

What a verdict carries besides its outcome:

    retry_after          how long the upstream asked us to wait (non-2xx answers only): its
                         headers, else for a 429 Google's `RetryInfo` in the body
    quota_exhausted      a 429/402 whose error says the quota or credits are gone
    preemptive_cooldown  `x-ratelimit-remaining-*: 0` on any answer: wait for the reset

Error bodies come in every shape (OpenAI JSON, a bare string, HTML from a load balancer,
megabytes of junk); nothing here raises on any of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import orjson

from proxy.waithint import MAX_COOLDOWN, parse_duration, preemptive_cooldown, retry_after_seconds

# Error bodies are small; past these sizes the body is not an OpenAI error object, so only
# its beginning is worth a look.
_MAX_JSON_BYTES = 1024 * 1024
_MAX_SCAN_BYTES = 64 * 1024


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
        preemptive_cooldown=preemptive_cooldown(headers, wall_now),
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
    document = _json_error(body)
    if document is _NOT_JSON:
        return [body[:_MAX_SCAN_BYTES].decode("utf-8", "replace").lower()]
    return [text.lower() for text in _descriptive_strings(document)]


_NOT_JSON = object()


def _json_error(body: bytes) -> object:
    """The parsed error body (Google's one-element list unwrapped); `_NOT_JSON` for a body
    that is not JSON, or too large to be an error object."""
    if not body or len(body) > _MAX_JSON_BYTES:
        return _NOT_JSON
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _NOT_JSON
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
