"""Serving one routed request: run the failover loop, then relay the winner to the client.

`Call` carries what the server parsed from the client's request; `Forwarder` turns it into
upstream attempts (body with only `model` rewritten, headers without the client's
credentials) and the client response: a JSON body, an SSE stream, or an error.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import ClientSession, web
from aiohttp.web import BaseRequest

from proxy import attempt, jsontext
from proxy.attempt import Answer, AttemptLimits, Failed, OpenStream
from proxy.classify import Verdict
from proxy.continuation import Continuer, can_continue, later_prefill_candidates
from proxy.continuation import Result as ContinuationResult
from proxy.downstream import ClientStream, SSEResponse
from proxy.errors import ProxyError, bad_request, error_body, scrub
from proxy.failover import Exhausted, Failover, Trail, Won, exhausted_error
from proxy.gateway import Gateway
from proxy.keypool import Lease
from proxy.observer import Observer
from proxy.relay import Relay, RelayResult, cut_verdict
from proxy.routing import Candidate, Plan
from proxy.sse import encode_event
from proxy.streamstate import StreamKind, StreamTracker
from proxy.upstream import attempt_headers


@dataclass(slots=True)
class Call:
    """One client request as the proxy understood it, and what became of it."""

    request_id: str
    route: str  # metric label
    path: str  # API path after `/v1/`, e.g. "chat/completions"
    body: bytes
    payload: dict[str, Any]
    model: str
    stream: bool
    forwarded: dict[str, str]
    started: float
    trail: Trail = field(default_factory=Trail)
    status: int = 0
    provider: str | None = None
    tier: int | None = None
    ttfb: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    interrupted: str | None = None
    client_stream: ClientStream | None = None
    tracker: StreamTracker | None = None  # what a started stream has shown so far
    _bodies: dict[str, bytes] = field(default_factory=dict)

    def body_for(self, upstream_model: str) -> bytes:
        """The client's body with `model` rewritten; the raw bytes when nothing changes."""
        if upstream_model == self.model:
            return self.body
        body = self._bodies.get(upstream_model)
        if body is None:
            payload = dict(self.payload)
            payload["model"] = upstream_model
            try:
                body = jsontext.dumps(payload)  # the stdlib for what orjson refuses
            except ValueError:
                # Parsed, but too deep for either encoder to write back: the client's to fix,
                # and no upstream would take it either.
                raise bad_request(
                    "The request body is nested too deeply to forward; flatten it."
                ) from None
            self._bodies[upstream_model] = body
        return body


class Forwarder:
    """Runs routed requests against one gateway's table and pool."""

    def __init__(
        self,
        gateway: Gateway,
        session: ClientSession,
        observer: Observer,
        keepalive: float,
    ) -> None:
        self._gateway = gateway
        self._session = session
        self._observer = observer
        self._keepalive = keepalive
        self._failover = Failover(gateway.pool, observer, time.monotonic)

    def _request(
        self, call: Call, candidate: Candidate, lease: Lease, deadline: float
    ) -> tuple[str, bytes, dict[str, str], AttemptLimits]:
        """URL, body, headers and limits of one attempt on `candidate` with `lease`'s key."""
        timeouts = candidate.provider.timeouts
        return (
            self._url(candidate, call),
            call.body_for(candidate.upstream_model),
            attempt_headers(candidate.provider, lease, call.forwarded),
            AttemptLimits(
                timeouts.connect,
                timeouts.first_byte,
                timeouts.idle,
                deadline,
                self._gateway.settings.server.max_response_bytes,
            ),
        )

    def _deadline(self, call: Call, candidate: Candidate) -> float:
        return call.started + candidate.provider.timeouts.total

    def _url(self, candidate: Candidate, call: Call) -> str:
        return f"{candidate.endpoint.base_url}/{call.path}"

    async def serve(self, request: BaseRequest, call: Call) -> web.StreamResponse:
        plan = self._gateway.table.plan(call.model, call.path)
        if plan.empty:
            return self._error_response(
                call, exhausted_error(Exhausted(plan), call.model, call.trail)
            )
        deadline = self._deadline(call, plan.tiers[0][0])
        if call.stream:
            return await self._serve_stream(request, call, plan, deadline)
        return await self._serve_plain(call, plan, deadline)

    # -- plain ---------------------------------------------------------------------------

    async def _serve_plain(self, call: Call, plan: Plan, deadline: float) -> web.StreamResponse:
        json_only = call.path in attempt.JSON_ROUTES

        async def try_once(candidate: Candidate, lease: Lease) -> Answer | Failed:
            return await attempt.plain(
                self._session,
                *self._request(call, candidate, lease, deadline),
                json_only=json_only,
            )

        outcome = await self._failover.run(plan, call.trail, deadline, try_once)
        if isinstance(outcome, Exhausted):
            return self._error_response(call, exhausted_error(outcome, call.model, call.trail))
        answer = outcome.result
        self._won(call, outcome, answer.verdict, answer.ttfb)
        usage = answer.parsed.get("usage") if isinstance(answer.parsed, dict) else None
        if isinstance(usage, dict):
            self._record_usage(call, outcome, usage)
        self._gateway.pool.release(outcome.lease, answer.verdict, self._now())
        call.status = answer.status
        headers = self._routing_headers(call)
        # An upstream that echoes request headers (debug endpoints, some gateways) would hand
        # the key to the client: a search per credential, nothing copied when none is there.
        body = scrub(answer.body, self._gateway.secrets)
        if answer.content_type is not None:
            # Not JSON (audio, an image, plain text): the upstream's bytes and type as they came.
            headers["Content-Type"] = answer.content_type
            return web.Response(status=answer.status, body=body, headers=headers)
        return web.Response(
            status=answer.status,
            body=body,
            content_type="application/json",
            headers=headers,
        )

    # -- stream --------------------------------------------------------------------------

    async def _serve_stream(
        self, request: BaseRequest, call: Call, plan: Plan, deadline: float
    ) -> web.StreamResponse:
        client = ClientStream(request, {"x-request-id": call.request_id}, self._keepalive)
        call.client_stream = client
        client.arm_keepalive()
        opened: OpenStream | None = None
        lease: Lease | None = None
        try:

            async def try_once(candidate: Candidate, lease: Lease) -> OpenStream | Failed:
                url, body, headers, limits = self._request(call, candidate, lease, deadline)
                headers["Accept"] = "text/event-stream"
                return await attempt.stream(self._session, url, body, headers, limits)

            try:
                outcome = await self._failover.run(plan, call.trail, deadline, try_once)
            except ProxyError as refused:
                # The client's body could not be sent on (`Call.body_for`). Before any byte
                # went out it is an ordinary error answer; after keepalives sent a 200 it
                # must end the stream as an error event, not leave it empty.
                if not client.prepared:
                    raise
                return await self._fail_started_stream(client, call, refused)
            if isinstance(outcome, Exhausted):
                failure = exhausted_error(outcome, call.model, call.trail)
                if not client.prepared:
                    return self._error_response(call, failure)
                return await self._fail_started_stream(client, call, failure)
            opened, lease = outcome.result, outcome.lease
            self._won(call, outcome, opened.verdict, opened.ttfb)
            response = await client.commit(self._routing_headers(call))
            call.status = 200
            tracker = call.tracker = _tracker_for(call)
            result = await self._relay(call, outcome, response, tracker, deadline)
            verdict = opened.verdict if result.cut is None else cut_verdict(result.cut)
            self._gateway.pool.release(lease, verdict, self._now())
            lease = None
            if result.cut is not None:
                await self._after_cut(call, plan, outcome, response, tracker, result, deadline)
            return response
        finally:
            if lease is not None:  # cancelled (client gone) or failed mid-way: free the slot
                self._gateway.pool.release(lease, None, self._now())
            if opened is not None:
                if opened.response.content.at_eof():
                    opened.response.release()
                else:
                    opened.response.close()
            await client.close()

    async def _relay(
        self,
        call: Call,
        won: Won[OpenStream],
        response: SSEResponse,
        tracker: StreamTracker,
        deadline: float,
    ) -> RelayResult:
        provider = won.candidate.provider
        relay = Relay(
            won.result, response, tracker, provider.timeouts.idle, deadline, drop_usage_chunk=False
        )
        result = await relay.run()
        if result.malformed:
            self._observer.malformed(provider.tier, provider.name, result.malformed)
        if tracker.usage_seen:
            call.prompt_tokens, call.completion_tokens = (
                tracker.prompt_tokens,
                tracker.completion_tokens,
            )
            self._gateway.pool.record_usage(
                won.lease, tracker.prompt_tokens, tracker.completion_tokens
            )
            self._observer.tokens(
                provider.tier, provider.name, tracker.prompt_tokens, tracker.completion_tokens
            )
        return result

    async def _after_cut(
        self,
        call: Call,
        plan: Plan,
        won: Won[OpenStream],
        response: SSEResponse,
        tracker: StreamTracker,
        result: RelayResult,
        deadline: float,
    ) -> None:
        """Continue the cut stream elsewhere if possible; else end it with the original error."""
        assert result.cut is not None
        provider = won.candidate.provider
        call.interrupted = result.cut.value
        self._observer.interruption(provider.tier, provider.name, result.cut.value)
        if can_continue(tracker, call.payload):
            continuer = Continuer(
                self._session,
                self._gateway.pool,
                self._observer,
                call.forwarded,
                lambda candidate: self._url(candidate, call),
            )
            resumed = await continuer.resume(
                later_prefill_candidates(plan, won.candidate),
                won.candidate,
                call.payload,
                tracker,
                response,
                deadline,
            )
            call.trail.add(resumed.to_provider, f"continuation_{resumed.result}")
            if tracker.usage_seen:
                call.prompt_tokens, call.completion_tokens = (
                    tracker.prompt_tokens,
                    tracker.completion_tokens,
                )
            if resumed.result == ContinuationResult.OK:
                call.interrupted = f"{result.cut.value}, continued"
                return
        failure = ProxyError(
            502,
            f"The upstream stream from '{provider.name}' was interrupted: {result.error_detail}.",
            "api_error",
            f"stream_{result.cut.value}",
        )
        await self._stream_error(response, call, failure)

    async def _fail_started_stream(
        self, client: ClientStream, call: Call, failure: ProxyError | Failed
    ) -> web.StreamResponse:
        """Keepalives already sent the headers as 200: the stream ends with the failure as an
        error event, and the request is counted and logged with the status it would have had."""
        call.status = _failure_status(failure)
        await self._stream_error(client.response, call, failure)
        return client.response  # type: ignore[return-value]

    async def _stream_error(
        self, response: SSEResponse | None, call: Call, failure: ProxyError | Failed
    ) -> None:
        """End a started stream with an error event and no `[DONE]`."""
        if response is None:
            return
        if isinstance(failure, Failed):
            body = scrub(failure.body, self._gateway.secrets) or error_body(
                "Upstream error", "api_error", None
            )
        else:
            body = failure.body()
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = orjson.loads(error_body("Upstream error", "api_error", None))
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write(encode_event(orjson.dumps(obj)))

    # -- shared --------------------------------------------------------------------------

    def _now(self) -> float:
        return time.monotonic()

    def _won(self, call: Call, won: Won[Any], verdict: Verdict, ttfb: float) -> None:
        provider = won.candidate.provider
        call.trail.add(provider.name, verdict.outcome.value)
        call.provider, call.tier, call.ttfb = provider.name, provider.tier, ttfb
        self._observer.attempt(provider.tier, provider.name, verdict.outcome.value, ttfb)

    def _record_usage(self, call: Call, won: Won[Any], usage: dict[str, Any]) -> None:
        prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
        completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
        prompt = prompt if isinstance(prompt, int) else 0
        completion = completion if isinstance(completion, int) else 0
        call.prompt_tokens, call.completion_tokens = prompt, completion
        self._gateway.pool.record_usage(won.lease, prompt, completion)
        provider = won.candidate.provider
        self._observer.tokens(provider.tier, provider.name, prompt, completion)

    def _routing_headers(self, call: Call) -> dict[str, str]:
        headers = {"x-request-id": call.request_id, "x-proxy-attempts": str(call.trail.count)}
        if call.provider is not None:
            headers["x-proxy-provider"] = call.provider
            headers["x-proxy-tier"] = str(call.tier)
        return headers

    def _error_response(self, call: Call, failure: ProxyError | Failed) -> web.Response:
        headers = self._routing_headers(call)
        if isinstance(failure, Failed):
            # An upstream 4xx returned as it is (client error, context length), key scrubbed.
            call.status = _failure_status(failure)
            if failure.headers is not None:
                for name in ("Retry-After",):
                    value = failure.headers.get(name)
                    if value is not None:
                        headers[name] = value
            content_type = "application/json"
            if failure.headers is not None:
                content_type = failure.headers.get("Content-Type", content_type).split(";")[0]
            return web.Response(
                status=call.status,
                body=scrub(failure.body, self._gateway.secrets),
                content_type=content_type,
                headers=headers,
            )
        call.status = failure.status
        headers.update(failure.headers)
        return web.Response(
            status=failure.status,
            body=failure.body(),
            content_type="application/json",
            headers=headers,
        )


def _failure_status(failure: ProxyError | Failed) -> int:
    # A `Failed` without a status never reached an HTTP answer: the gateway's 502.
    return failure.status if isinstance(failure, ProxyError) else failure.status or 502


def _tracker_for(call: Call) -> StreamTracker:
    options = call.payload.get("stream_options")
    usage_asked = isinstance(options, dict) and options.get("include_usage") is True
    n = call.payload.get("n", 1)
    return StreamTracker(
        StreamKind.for_path(call.path), n if isinstance(n, int) else 1, usage_asked
    )
