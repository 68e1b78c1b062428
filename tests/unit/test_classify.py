"""Tests for proxy.classify: §5 outcomes, wait hints, quota and context-length detection."""

from __future__ import annotations

from email.utils import formatdate

import orjson
import pytest

from proxy.classify import (
    BAD_RESPONSE_VERDICT,
    CONNECT_ERROR_VERDICT,
    KEY_FAILURES,
    PROVIDER_FAILURES,
    TIMEOUT_VERDICT,
    Outcome,
    Verdict,
    classify_response,
    is_quota_exhausted,
)
from proxy.waithint import MAX_COOLDOWN, header, parse_duration, retry_after_seconds

NOW = 1_700_000_000.0


def error_body(message: str = "", code: str | None = None, type_: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "code": code}})


def classify(status: int, body: bytes = b"", **headers: str) -> Verdict:
    return classify_response(
        status, {k.replace("_", "-"): v for k, v in headers.items()}, body, NOW
    )


# --- outcome labels ------------------------------------------------------------------------


def test_outcome_values_are_the_spec_labels() -> None:
    assert {o.value for o in Outcome} == {
        "ok",
        "context_length",
        "client_error",
        "auth_error",
        "forbidden",
        "not_found",
        "rate_limited",
        "server_error",
        "connect_error",
        "timeout",
        "bad_response",
    }
    assert str(Outcome.RATE_LIMITED) == "rate_limited"


def test_failure_groups() -> None:
    assert {
        Outcome.SERVER_ERROR,
        Outcome.CONNECT_ERROR,
        Outcome.TIMEOUT,
        Outcome.BAD_RESPONSE,
    } == PROVIDER_FAILURES
    assert {Outcome.AUTH_ERROR, Outcome.FORBIDDEN, Outcome.RATE_LIMITED} == KEY_FAILURES


def test_transport_verdicts() -> None:
    assert Verdict(Outcome.CONNECT_ERROR) == CONNECT_ERROR_VERDICT
    assert Verdict(Outcome.TIMEOUT) == TIMEOUT_VERDICT
    assert Verdict(Outcome.BAD_RESPONSE) == BAD_RESPONSE_VERDICT


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.OK),
        (201, Outcome.OK),
        (204, Outcome.OK),
        (400, Outcome.CLIENT_ERROR),
        (401, Outcome.AUTH_ERROR),
        (402, Outcome.FORBIDDEN),
        (403, Outcome.FORBIDDEN),
        (404, Outcome.NOT_FOUND),
        (405, Outcome.CLIENT_ERROR),
        (408, Outcome.RATE_LIMITED),
        (409, Outcome.CLIENT_ERROR),
        (413, Outcome.CLIENT_ERROR),
        (415, Outcome.CLIENT_ERROR),
        (422, Outcome.CLIENT_ERROR),
        (429, Outcome.RATE_LIMITED),
        (451, Outcome.CLIENT_ERROR),
        (499, Outcome.CLIENT_ERROR),
        (500, Outcome.SERVER_ERROR),
        (502, Outcome.SERVER_ERROR),
        (503, Outcome.SERVER_ERROR),
        (504, Outcome.SERVER_ERROR),
        (529, Outcome.SERVER_ERROR),
        (599, Outcome.SERVER_ERROR),
        (100, Outcome.BAD_RESPONSE),
        (301, Outcome.BAD_RESPONSE),
        (304, Outcome.BAD_RESPONSE),
        (0, Outcome.BAD_RESPONSE),
        (600, Outcome.BAD_RESPONSE),
    ],
)
def test_status_to_outcome(status: int, outcome: Outcome) -> None:
    assert classify(status, error_body("something went wrong")).outcome is outcome


def test_content_filter_400_is_a_client_error() -> None:
    body = error_body("The response was filtered", code="content_filter")
    assert classify(400, body).outcome is Outcome.CLIENT_ERROR


# --- context length ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        error_body("too long", code="context_length_exceeded"),
        error_body("too long", type_="context_length_exceeded"),
        error_body("This model's maximum context length is 8192 tokens. However, ..."),
        error_body("Input exceeds the context window of this model"),
        error_body("prompt is too long: 210000 tokens > 200000 maximum"),
        orjson.dumps({"object": "error", "message": "This model's maximum context length is 4096"}),
        orjson.dumps({"error": "context_length_exceeded"}),
        orjson.dumps([{"error": {"code": 400, "message": "exceeds the context window"}}]),
        b"maximum context length exceeded",  # not JSON: read as text
    ],
)
def test_context_length_detected_on_400(body: bytes) -> None:
    assert classify(400, body).outcome is Outcome.CONTEXT_LENGTH


@pytest.mark.parametrize("status", [413, 422])
def test_context_length_detected_on_other_too_large_statuses(status: int) -> None:
    body = error_body("too long", code="context_length_exceeded")
    assert classify(status, body).outcome is Outcome.CONTEXT_LENGTH


@pytest.mark.parametrize("status", [401, 404, 429, 500])
def test_context_length_text_does_not_override_other_statuses(status: int) -> None:
    body = error_body("too long", code="context_length_exceeded")
    assert classify(status, body).outcome is not Outcome.CONTEXT_LENGTH


def test_context_length_only_read_from_descriptive_fields() -> None:
    # The words elsewhere in a JSON error (an echoed parameter) are no statement about it.
    body = orjson.dumps({"error": {"message": "bad value", "param": "maximum context length"}})
    assert classify(400, body).outcome is Outcome.CLIENT_ERROR


# --- never raise ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html><body>502 Bad Gateway</body></html>",
        b"\xff\xfe\x00garbage",
        b"[" * 100_000,
        b"null",
        b"42",
        b"[]",
        b'"just a string"',
        orjson.dumps({"error": None}),
        orjson.dumps({"error": 5}),
        orjson.dumps({"error": {"message": 7, "code": 429}}),
        b"x" * (3 * 1024 * 1024),
    ],
)
@pytest.mark.parametrize("status", [200, 400, 402, 429, 500])
def test_any_body_classifies_without_raising(body: bytes, status: int) -> None:
    verdict = classify(status, body)
    assert isinstance(verdict.outcome, Outcome)


def test_garbage_headers_are_ignored() -> None:
    verdict = classify(
        429,
        b"",
        retry_after="whenever",
        retry_after_ms="-5",
        x_ratelimit_remaining_requests="lots",
        x_ratelimit_reset_requests="1 fortnight",
    )
    assert verdict == Verdict(Outcome.RATE_LIMITED)


# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5s", 0.5),
        ("7.66s", 7.66),
        ("2m59.56s", 179.56),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("100ns", 1e-7),
        ("1h", 3600.0),
        ("3", 3.0),
        ("1.5", 1.5),
        ("0", 0.0),
        (" 2s ", 2.0),
        ("1S", 1.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "s", "abc", "1x", "-1s", "-3", "1s2", "nan", "inf", "1e3", "1 s", "9" * 400]
)
def test_parse_duration_rejects(text: str) -> None:
    assert parse_duration(text) is None


# --- retry-after ---------------------------------------------------------------------------


def test_retry_after_delta_seconds() -> None:
    assert retry_after_seconds({"retry-after": "7"}, NOW) == 7.0


def test_retry_after_http_date() -> None:
    date = formatdate(NOW + 120, usegmt=True)
    assert retry_after_seconds({"retry-after": date}, NOW) == pytest.approx(120.0)


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    date = formatdate(NOW - 120, usegmt=True)
    assert retry_after_seconds({"retry-after": date}, NOW) == 0.0


def test_retry_after_ms() -> None:
    assert retry_after_seconds({"retry-after-ms": "1500"}, NOW) == 1.5


def test_reset_requests_and_tokens_durations() -> None:
    assert retry_after_seconds({"x-ratelimit-reset-requests": "6m0s"}, NOW) == 360.0
    assert retry_after_seconds({"x-ratelimit-reset-tokens": "20ms"}, NOW) == pytest.approx(0.02)


def test_reset_as_epoch_timestamp_is_made_relative() -> None:
    seconds = {"x-ratelimit-reset-requests": str(int(NOW + 30))}
    millis = {"x-ratelimit-reset-tokens": str(int((NOW + 45) * 1000))}
    assert retry_after_seconds(seconds, NOW) == pytest.approx(30.0)
    assert retry_after_seconds(millis, NOW) == pytest.approx(45.0)


def test_retry_after_preference_order() -> None:
    all_four = {
        "retry-after-ms": "500",
        "retry-after": "7",
        "x-ratelimit-reset-requests": "9s",
        "x-ratelimit-reset-tokens": "11s",
    }
    assert retry_after_seconds(all_four, NOW) == 0.5
    del all_four["retry-after-ms"]
    assert retry_after_seconds(all_four, NOW) == 7.0
    del all_four["retry-after"]
    assert retry_after_seconds(all_four, NOW) == 9.0
    del all_four["x-ratelimit-reset-requests"]
    assert retry_after_seconds(all_four, NOW) == 11.0
    del all_four["x-ratelimit-reset-tokens"]
    assert retry_after_seconds(all_four, NOW) is None


def test_unparsable_header_falls_through_to_the_next() -> None:
    headers = {"retry-after-ms": "soon", "retry-after": "Someday", "x-ratelimit-reset-tokens": "2s"}
    assert retry_after_seconds(headers, NOW) == 2.0


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "999999"},
        {"retry-after-ms": "999999999"},
        {"x-ratelimit-reset-requests": "100h"},
        {"retry-after": formatdate(NOW + 10 * 86400, usegmt=True)},
    ],
)
def test_retry_after_capped_at_a_day(headers: dict[str, str]) -> None:
    assert retry_after_seconds(headers, NOW) == MAX_COOLDOWN == 86400.0


def test_header_lookup_tolerates_any_casing() -> None:
    assert retry_after_seconds({"Retry-After": "3"}, NOW) == 3.0
    assert retry_after_seconds({"X-RateLimit-Reset-Requests": "4s"}, NOW) == 4.0
    assert header({"RETRY-AFTER-MS": "1"}, "retry-after-ms") == "1"
    assert header({"other": "1"}, "retry-after") is None


def test_classify_carries_retry_after_on_errors_only() -> None:
    assert classify(429, retry_after="5").retry_after == 5.0
    assert classify(503, retry_after="5").retry_after == 5.0
    # Every OpenAI answer carries reset headers; on a success they ask for no wait.
    assert classify(200, x_ratelimit_reset_requests="5s").retry_after is None


# --- quota ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        error_body("You exceeded your current quota", code="insufficient_quota"),
        error_body("x", type_="insufficient_quota"),
        error_body("Rate limit reached on requests per day (RPD): Limit 1000"),
        error_body("Daily limit reached for this key"),
        error_body("Insufficient credits. Add more using https://example.test/credits"),
        error_body("Billing hard limit has been reached", code="billing_hard_limit_reached"),
        error_body("Insufficient Balance"),
        orjson.dumps({"error": {"message": "Rate limit exceeded: free-models-per-day"}}),
        b"Your daily quota is spent",
    ],
)
def test_quota_exhaustion_detected(body: bytes) -> None:
    assert is_quota_exhausted(body)
    assert classify(429, body).quota_exhausted


@pytest.mark.parametrize(
    "body",
    [
        b"",
        error_body("Rate limit reached for requests per minute", code="rate_limit_exceeded"),
        error_body("Too many requests, slow down"),
        b"<html>429 Too Many Requests</html>",
    ],
)
def test_plain_throttle_is_not_quota(body: bytes) -> None:
    assert not is_quota_exhausted(body)
    assert not classify(429, body).quota_exhausted


# Real error bodies, as providers send them (organisation ids made up).
GROQ_TPM = error_body(
    "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_01abc` "
    "service tier `on_demand` on tokens per minute (TPM): Limit 12000, Used 2542, "
    "Requested 9855. Please try again in 1.984999999s. Need more tokens? Upgrade to Dev "
    "Tier today at https://console.groq.com/settings/billing",
    code="rate_limit_exceeded",
    type_="tokens",
)
GROQ_RPD = error_body(
    "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_01abc` "
    "service tier `on_demand` on requests per day (RPD): Limit 1000, Used 1000, Requested 1. "
    "Please try again in 1m26.4s. Need more tokens? Upgrade to Dev Tier today at "
    "https://console.groq.com/settings/billing",
    code="rate_limit_exceeded",
    type_="requests",
)
GROQ_TPD = error_body(
    "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_01abc` "
    "service tier `on_demand` on tokens per day (TPD): Limit 100000, Used 97050, "
    "Requested 3619. Please try again in 9m38.016s. Need more tokens? Upgrade to Dev Tier "
    "today at https://console.groq.com/settings/billing",
    code="rate_limit_exceeded",
    type_="tokens",
)
OPENAI_QUOTA = error_body(
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors.",
    code="insufficient_quota",
    type_="insufficient_quota",
)
OPENAI_TPM = error_body(
    "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit "
    "30000, Used 26842, Requested 4096. Please try again in 1.876s. Visit "
    "https://platform.openai.com/account/rate-limits to learn more.",
    code="rate_limit_exceeded",
    type_="tokens",
)
ANTHROPIC_CREDIT = orjson.dumps(
    {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "Your credit balance is too low to access the Anthropic API. Please go "
            "to Plans & Billing to upgrade or purchase credits.",
        },
    }
)
OPENROUTER_PER_MIN = orjson.dumps(
    {"error": {"message": "Rate limit exceeded: free-models-per-min.", "code": 429}}
)
OPENROUTER_PER_DAY = orjson.dumps(
    {
        "error": {
            "message": "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock "
            "1000 free model requests per day",
            "code": 429,
        }
    }
)
MISTRAL_THROTTLE = orjson.dumps(
    {
        "object": "error",
        "message": "Rate limit exceeded",
        "type": "rate_limited",
        "param": None,
        "code": "1300",
    }
)
VERTEX_PER_MINUTE = orjson.dumps(
    [
        {
            "error": {
                "code": 429,
                "message": "Quota exceeded for aiplatform.googleapis.com/"
                "generate_content_requests_per_minute_per_project_per_base_model with base "
                "model: gemini-pro. Please submit a quota increase request.",
                "status": "RESOURCE_EXHAUSTED",
            }
        }
    ]
)


def test_groq_per_minute_429_is_a_throttle_despite_its_billing_link() -> None:
    verdict = classify(429, GROQ_TPM, retry_after="2")
    assert verdict == Verdict(Outcome.RATE_LIMITED, retry_after=2.0)


@pytest.mark.parametrize("body", [GROQ_RPD, GROQ_TPD], ids=["groq-rpd", "groq-tpd"])
def test_groq_daily_limit_is_quota(body: bytes) -> None:
    verdict = classify(429, body, retry_after="86")
    assert verdict == Verdict(Outcome.RATE_LIMITED, retry_after=86.0, quota_exhausted=True)


def test_openai_insufficient_quota_is_quota() -> None:
    assert classify(429, OPENAI_QUOTA).quota_exhausted


def test_openai_per_minute_429_is_a_throttle() -> None:
    verdict = classify(429, OPENAI_TPM, retry_after="2")
    assert verdict == Verdict(Outcome.RATE_LIMITED, retry_after=2.0)


@pytest.mark.parametrize(
    ("body", "spent"),
    [
        (ANTHROPIC_CREDIT, True),
        (OPENROUTER_PER_DAY, True),
        (OPENROUTER_PER_MIN, False),
        (MISTRAL_THROTTLE, False),
        (orjson.dumps({"message": "Requests rate limit exceeded"}), False),  # Mistral
        (VERTEX_PER_MINUTE, False),  # "quota exceeded", but for a minute window
        (b"Too many requests. Limits: https://example.test/docs/quota#per_day", False),
    ],
    ids=[
        "anthropic-credit",
        "openrouter-per-day",
        "openrouter-per-min",
        "mistral-typed",
        "mistral-bare",
        "vertex-per-minute",
        "link-only",
    ],
)
def test_other_providers_quota_or_throttle(body: bytes, spent: bool) -> None:
    assert is_quota_exhausted(body) is spent


def test_402_with_credits_message_is_forbidden_and_quota() -> None:
    verdict = classify(402, error_body("Insufficient credits"))
    assert verdict.outcome is Outcome.FORBIDDEN
    assert verdict.quota_exhausted


@pytest.mark.parametrize("status", [200, 400, 403, 500, 503])
def test_quota_flag_only_on_429_and_402(status: int) -> None:
    assert not classify(status, error_body("quota", code="insufficient_quota")).quota_exhausted


# --- preemptive cooldown -------------------------------------------------------------------


def test_preemptive_from_requests_window() -> None:
    verdict = classify(200, x_ratelimit_remaining_requests="0", x_ratelimit_reset_requests="2s")
    assert verdict.outcome is Outcome.OK
    assert verdict.preemptive_cooldown == 2.0


def test_preemptive_from_tokens_window() -> None:
    verdict = classify(200, x_ratelimit_remaining_tokens="0", x_ratelimit_reset_tokens="1m30s")
    assert verdict.preemptive_cooldown == 90.0


def test_preemptive_takes_the_larger_when_both_spent() -> None:
    verdict = classify(
        200,
        x_ratelimit_remaining_requests="0",
        x_ratelimit_reset_requests="2s",
        x_ratelimit_remaining_tokens="0",
        x_ratelimit_reset_tokens="6m0s",
    )
    assert verdict.preemptive_cooldown == 360.0


def test_preemptive_only_for_the_spent_window() -> None:
    verdict = classify(
        200,
        x_ratelimit_remaining_requests="0",
        x_ratelimit_reset_requests="2s",
        x_ratelimit_remaining_tokens="5000",
        x_ratelimit_reset_tokens="6m0s",
    )
    assert verdict.preemptive_cooldown == 2.0


def test_no_preemptive_while_budget_remains() -> None:
    verdict = classify(200, x_ratelimit_remaining_requests="3", x_ratelimit_reset_requests="2s")
    assert verdict.preemptive_cooldown is None


def test_no_preemptive_without_matching_reset() -> None:
    verdict = classify(200, x_ratelimit_remaining_requests="0", x_ratelimit_reset_tokens="2s")
    assert verdict.preemptive_cooldown is None


def test_preemptive_capped_at_a_day_and_on_errors_too() -> None:
    verdict = classify(429, x_ratelimit_remaining_tokens="0", x_ratelimit_reset_tokens="48h")
    assert verdict.preemptive_cooldown == MAX_COOLDOWN


def test_overdrawn_remaining_counts_as_spent() -> None:
    verdict = classify(200, X_RateLimit_Remaining_Requests="-2", X_RateLimit_Reset_Requests="3s")
    assert verdict.preemptive_cooldown == 3.0


def test_verdict_of_a_rate_limit_with_everything() -> None:
    body = error_body("You exceeded your current quota", code="insufficient_quota")
    verdict = classify(
        429,
        body,
        retry_after="20",
        x_ratelimit_remaining_requests="0",
        x_ratelimit_reset_requests="30s",
    )
    assert verdict == Verdict(Outcome.RATE_LIMITED, 20.0, True, 30.0)


# --- Google (Gemini) 429s: the window and the wait are in the body's details ---------------


def gemini_429(quota_ids: list[str], retry_delay: str | None, wrapped: bool = False) -> bytes:
    """A Gemini 429 as its OpenAI-compatible endpoint sends it: the same message for a
    per-minute throttle and a spent daily allowance; the details tell them apart."""
    details: list[object] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/"
                    "generate_content_free_tier_requests",
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                    "quotaValue": "10",
                }
                for quota_id in quota_ids
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [{"url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
        },
    ]
    if retry_delay is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        )
    error = {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing "
            "details. For more information on this error, head to: "
            "https://ai.google.dev/gemini-api/docs/rate-limits.",
            "status": "RESOURCE_EXHAUSTED",
            "details": details,
        }
    }
    return orjson.dumps([error] if wrapped else error)


@pytest.mark.parametrize("wrapped", [False, True])
def test_gemini_per_minute_429_is_a_throttle_that_waits_its_retry_delay(wrapped: bool) -> None:
    body = gemini_429(["GenerateRequestsPerMinutePerProjectPerModel-FreeTier"], "45s", wrapped)
    verdict = classify(429, body)
    assert verdict.outcome is Outcome.RATE_LIMITED
    assert not verdict.quota_exhausted
    assert verdict.retry_after == 45.0


def test_gemini_daily_allowance_429_is_a_spent_quota() -> None:
    ids = [
        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
        "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
    ]
    verdict = classify(429, gemini_429(ids, "27.5s"))
    assert verdict.quota_exhausted
    assert verdict.retry_after == 27.5


def test_a_retry_header_wins_over_the_body_delay() -> None:
    body = gemini_429(["GenerateRequestsPerMinutePerProjectPerModel-FreeTier"], "45s")
    assert classify(429, body, retry_after="3").retry_after == 3.0


def test_a_body_delay_only_counts_on_a_429() -> None:
    body = gemini_429(["GenerateRequestsPerMinutePerProjectPerModel-FreeTier"], "45s")
    assert classify(503, body).retry_after is None


@pytest.mark.parametrize("delay", ["soon", "-5s", "", "1e400s"])
def test_an_unreadable_retry_delay_is_no_hint(delay: str) -> None:
    body = gemini_429(["GenerateRequestsPerMinutePerProjectPerModel-FreeTier"], delay)
    assert classify(429, body).retry_after is None
