"""Resuming a cut stream on another provider with the text already sent as a prefill.

When a committed chat stream breaks (SPEC §6), a later candidate that declares
`continuation: prefill` gets the original request with one more message: the assistant text
the client has already received. Whatever it generates is relayed into the same client stream
under the original stream's `id`, so the client sees one answer. Only for a single text choice
with no tool call in flight: anything else cannot be stitched back together faithfully.

The pure helpers decide whether and how; `Continuer` does the I/O with the same attempt and
relay machinery as the first answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientSession

from proxy import attempt, jsontext
from proxy.attempt import AttemptLimits, Failed
from proxy.classify import Outcome
from proxy.downstream import SSEResponse
from proxy.keypool import KeyPool, Lease, Refusal
from proxy.observer import Observer
from proxy.relay import Relay, RelayResult, cut_verdict
from proxy.routing import Candidate, Plan
from proxy.settings import Continuation
from proxy.streamstate import StreamKind, StreamTracker
from proxy.upstream import attempt_headers


class Result:
    """`llmproxy_stream_continuations_total{result}` values."""

    OK = "ok"
    REFUSED = "refused"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"


def can_continue(tracker: StreamTracker, payload: dict[str, Any]) -> bool:
    """A single text choice of a chat stream, no tool call in flight, some text sent."""
    n = payload.get("n", 1)
    return (
        tracker.kind is StreamKind.CHAT
        and (n == 1 or n is None)
        and not tracker.tool_call_seen
        and isinstance(payload.get("messages"), list)
        and bool(tracker.text)
    )


def prefill_payload(payload: dict[str, Any], upstream_model: str, text: str) -> dict[str, Any]:
    """The original request plus the text already streamed as a final assistant message."""
    messages = list(payload["messages"])
    messages.append({"role": "assistant", "content": text})
    out = dict(payload)
    out["messages"] = messages
    out["model"] = upstream_model
    out["stream"] = True
    return out


def later_prefill_candidates(plan: Plan, served: Candidate) -> list[Candidate]:
    """Candidates after the one that served, in failover order, that accept a prefill."""
    ordered = [c for group in plan.tiers for c in group]
    try:
        start = ordered.index(served) + 1
    except ValueError:
        start = 0
    return [
        c
        for c in ordered[start:]
        if c.provider.continuation is Continuation.PREFILL and c.provider is not served.provider
    ]


@dataclass(slots=True)
class ContinuationOutcome:
    result: str  # a `Result` value
    to_provider: str
    relay: RelayResult | None = None


class Continuer:
    """Tries prefill candidates in order until one continues the stream to its end."""

    def __init__(
        self,
        session: ClientSession,
        pool: KeyPool,
        observer: Observer,
        forwarded: dict[str, str],
        build_url: Callable[[Candidate], str],
    ) -> None:
        self._session = session
        self._pool = pool
        self._observer = observer
        self._forwarded = forwarded
        self._build_url = build_url

    async def resume(
        self,
        candidates: list[Candidate],
        served: Candidate,
        payload: dict[str, Any],
        tracker: StreamTracker,
        client: SSEResponse,
        deadline: float,
    ) -> ContinuationOutcome:
        from_provider = served.provider.name
        outcome = ContinuationOutcome(Result.UNAVAILABLE, "none")
        for candidate in candidates:
            if time.monotonic() >= deadline:
                break
            lease = self._pool.acquire(
                candidate.provider, candidate.endpoint, candidate.upstream_model, time.monotonic()
            )
            if isinstance(lease, Refusal):
                continue
            outcome = await self._try(candidate, lease, payload, tracker, client, deadline)
            self._observer.continuation(from_provider, candidate.provider.name, outcome.result)
            if outcome.result == Result.OK:
                return outcome
            if outcome.relay is not None:
                return outcome  # it had started writing: the stream cannot be resumed twice
        if outcome.result == Result.UNAVAILABLE:
            self._observer.continuation(from_provider, "none", Result.UNAVAILABLE)
        return outcome

    async def _try(
        self,
        candidate: Candidate,
        lease: Lease,
        payload: dict[str, Any],
        tracker: StreamTracker,
        client: SSEResponse,
        deadline: float,
    ) -> ContinuationOutcome:
        provider = candidate.provider
        name = provider.name
        headers = attempt_headers(provider, lease, self._forwarded)
        headers["Accept"] = "text/event-stream"
        timeouts = provider.timeouts
        limits = AttemptLimits(timeouts.connect, timeouts.first_byte, timeouts.idle, deadline)
        opened = None
        verdict = None
        try:
            prefill = prefill_payload(payload, candidate.upstream_model, "".join(tracker.text))
            try:
                # The text so far may end in half an emoji (a lone surrogate), which orjson
                # refuses; the stdlib writes it, unless the request nests past its own limit.
                body = jsontext.dumps(prefill)
            except ValueError:
                return ContinuationOutcome(Result.REFUSED, name)  # it cannot be sent again
            opened = await attempt.stream(
                self._session, self._build_url(candidate), body, headers, limits
            )
            if isinstance(opened, Failed):
                verdict = opened.verdict
                self._observer.attempt(provider.tier, name, verdict.outcome.value, None)
                refused = verdict.outcome in (Outcome.CLIENT_ERROR, Outcome.CONTEXT_LENGTH)
                return ContinuationOutcome(Result.REFUSED if refused else Result.FAILED, name)
            verdict = opened.verdict
            self._observer.attempt(provider.tier, name, verdict.outcome.value, opened.ttfb)
            relay = Relay(
                opened,
                client,
                tracker,
                timeouts.idle,
                deadline,
                drop_usage_chunk=False,
                rewrite_id=tracker.id,
                skip_role_only=True,
            )
            usage_before = tracker.usage_updates
            result = await relay.run()
            if tracker.usage_updates > usage_before:
                # What this provider reports for the continuation: its key and its tier pay.
                prompt, completion = tracker.prompt_tokens, tracker.completion_tokens
                self._pool.record_usage(lease, prompt, completion)
                self._observer.tokens(provider.tier, name, prompt, completion)
            if result.cut is not None:
                verdict = cut_verdict(result.cut)
                self._observer.interruption(provider.tier, name, result.cut.value)
                return ContinuationOutcome(Result.FAILED, name, result)
            return ContinuationOutcome(Result.OK, name, result)
        finally:
            self._pool.release(lease, verdict, time.monotonic())
            if opened is not None and not isinstance(opened, Failed):
                opened.response.close()
