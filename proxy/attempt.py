"""One upstream attempt, up to the moment it becomes an answer or a classified failure.

An attempt is an answer only once there is something to relay: a complete JSON body for a plain
request, the first data event for a stream (a 200 with no tokens is not an answer, SPEC §6).
Everything before that point can still fail over; this module reports which §5 class a failure
falls in, by exception type, never by message text.

Failure classes at this layer (transport errors split by phase, then kind):

    before the status line:  refused, reset, DNS, connect timeout -> connect_error
                             no status within `first_byte`        -> timeout
    after a non-2xx status:  classified from status/headers/body  (proxy.classify)
    after a 2xx status:      reset before the answer              -> connect_error
                             silent past `first_byte`             -> timeout
                             not JSON / not SSE / error event     -> bad_response
                             a plain answer over its size cap     -> bad_response

What a plain answer must be depends on the route. The OpenAI JSON APIs (`JSON_ROUTES`) answer
JSON whatever their Content-Type says. Other routed paths (`audio/speech`, ...) may answer any
media type, relayed as it came; only a body declared JSON (`application/json`, `*+json`) or
declaring nothing is parsed, and a web page (`text/html`) is a broken upstream there too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import ClientResponse, ClientSession
from aiohttp.hdrs import CONTENT_ENCODING, CONTENT_TYPE
from multidict import CIMultiDictProxy

from proxy.classify import (
    BAD_RESPONSE_VERDICT,
    CONNECT_ERROR_VERDICT,
    TIMEOUT_VERDICT,
    Outcome,
    Verdict,
    classify_response,
)
from proxy.clientrequest import ROUTES
from proxy.jsontext import loads, loads_or_none, salvage
from proxy.settings import MAX_RESPONSE_BYTES
from proxy.sse import DONE_DATA, SSEDecoder, SSEError, SSEEvent
from proxy.streamstate import is_error_event
from proxy.timing import loop_time_at
from proxy.timing import timeout_at as _timeout_at
from proxy.upstream import send, take_buffered

_ERROR_BODY_LIMIT = 1024 * 1024  # an upstream error body larger than this is cut when relayed

# The OpenAI JSON APIs, the routes with a metric label of their own: their 2xx answer must be
# JSON, whatever its Content-Type says.
JSON_ROUTES = frozenset(ROUTES)


@dataclass(slots=True)
class Failed:
    """A failed attempt; `status`/`body` are set when the upstream answered with an error."""

    verdict: Verdict
    status: int | None = None
    headers: CIMultiDictProxy[str] | None = None
    body: bytes = b""
    detail: str = ""


@dataclass(slots=True)
class Answer:
    """A complete plain (non-stream) answer, ready to relay.

    `content_type` is None for a JSON answer (`parsed` holds it); otherwise the upstream's own
    Content-Type, to relay with `body` as it came (`parsed` is None: nothing to read usage from).
    """

    verdict: Verdict
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    parsed: Any
    ttfb: float
    content_type: str | None = None


@dataclass(slots=True)
class OpenStream:
    """A stream that produced its first data event; the rest is read by the relay."""

    verdict: Verdict
    response: ClientResponse
    decoder: SSEDecoder
    events: list[SSEEvent]  # decoded so far, in order, the first data event among them
    parsed: list[Any] = field(default_factory=list)  # JSON of `events` (None for [DONE])
    ttfb: float = 0.0


@dataclass(frozen=True, slots=True)
class AttemptLimits:
    connect: float
    first_byte: float  # relative to the attempt's start
    idle: float
    deadline: float  # absolute, on time.monotonic(): the request's total budget
    # A plain answer is held whole before it is relayed: past this many bytes (inflated) it is
    # a broken upstream, not an answer. Streams are bounded per event by the SSE decoder.
    max_response_bytes: int = MAX_RESPONSE_BYTES


def failed_transport(exc: BaseException) -> Failed:
    """The failure an exception raised before the answer stands for."""
    # A connect timeout is also a TimeoutError: it must be told apart first, since a provider
    # that could not be reached is asked once more, a silent one is not.
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return Failed(CONNECT_ERROR_VERDICT, detail="connect timeout")
    if isinstance(exc, TimeoutError):
        return Failed(TIMEOUT_VERDICT, detail="no answer in time")
    if isinstance(exc, aiohttp.ClientResponseError):
        return Failed(BAD_RESPONSE_VERDICT, detail="malformed HTTP response")
    return Failed(CONNECT_ERROR_VERDICT, detail=type(exc).__name__)


async def _read_error_body(response: ClientResponse, limits: AttemptLimits) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async with _timeout_at(min(limits.deadline, time.monotonic() + limits.idle)):
            async for chunk in response.content.iter_any():
                chunks.append(chunk)
                size += len(chunk)
                if size >= _ERROR_BODY_LIMIT:
                    break
    except (TimeoutError, aiohttp.ClientError):
        pass  # what arrived is enough to classify; the status already says it failed
    return b"".join(chunks)[:_ERROR_BODY_LIMIT]


async def _open(
    session: ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    limits: AttemptLimits,
    started: float,
) -> ClientResponse | Failed:
    try:
        async with _timeout_at(min(limits.deadline, started + limits.first_byte)):
            return await send(session, url, body, headers, limits.connect)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return failed_transport(exc)


async def _read_answer(response: ClientResponse, cap: int) -> bytes | None:
    """The whole 2xx body, or None as soon as it is known to be over `cap` bytes."""
    length = response.content_length
    if length is not None and not response.headers.get(CONTENT_ENCODING):
        # The parser reads no more than the declared length: one read, as cheap as ever.
        if length > cap:
            return None
        return await response.read()
    # No length, or a compressed body whose length says nothing of what it inflates to:
    # counted as read. aiohttp inflates chunk by chunk under flow control (`read()` would
    # lift it), so a gzip bomb stops here at `cap` too.
    content = response.content
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _media_type(response: ClientResponse) -> str | None:
    """The declared media type of a 2xx body that need not be JSON; None if it must be."""
    if not response.headers.get(CONTENT_TYPE):
        return None  # an OpenAI-compatible answer that names no type is taken for JSON
    media = response.content_type
    if media == "application/json" or media.endswith("+json"):
        return None
    return media


async def _fail_from_status(response: ClientResponse, limits: AttemptLimits) -> Failed:
    body = await _read_error_body(response, limits)
    response.release()
    verdict = classify_response(response.status, response.headers, body, time.time())
    return Failed(verdict, response.status, response.headers, body)


async def plain(
    session: ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    limits: AttemptLimits,
    *,
    json_only: bool = True,
) -> Answer | Failed:
    """Send a non-stream request and read the whole answer.

    `json_only`: the route's answer must be JSON (`JSON_ROUTES`); else a 2xx body of another
    media type is relayed as it came.
    """
    started = time.monotonic()
    response: ClientResponse | None = None
    data: bytes | None = b""
    try:
        # One timer for both phases, moved once: the headers within `first_byte`, then the
        # body within the request's budget (a second asyncio.timeout cost more than that).
        async with _timeout_at(min(limits.deadline, started + limits.first_byte)) as timer:
            response = await send(session, url, body, headers, limits.connect)
            ttfb = time.monotonic() - started
            if 200 <= response.status < 300:
                timer.reschedule(loop_time_at(limits.deadline))
                data = await _read_answer(response, limits.max_response_bytes)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        if response is not None:
            response.release()
        return failed_transport(exc)
    if data is None:
        # The rest of the body is still on the wire: the connection must not be reused.
        response.close()
        return Failed(
            BAD_RESPONSE_VERDICT,
            response.status,
            response.headers,
            b"",
            "answer over server.max_response_bytes",
        )
    try:
        if not 200 <= response.status < 300:
            return await _fail_from_status(response, limits)
        media = None if json_only else _media_type(response)
        if media is None:
            try:
                parsed = orjson.loads(data)
            except orjson.JSONDecodeError:
                # Only what orjson refused gets here, so None is invalid JSON, never a `null`.
                parsed = salvage(data)
                if parsed is None:
                    return Failed(
                        BAD_RESPONSE_VERDICT, response.status, response.headers, b"", "not JSON"
                    )
            content_type = None
        elif media == "text/html":
            # An error or maintenance page in front of the API, not an answer.
            return Failed(
                BAD_RESPONSE_VERDICT, response.status, response.headers, b"", "a web page"
            )
        else:
            parsed, content_type = None, response.headers[CONTENT_TYPE]
        verdict = classify_response(response.status, response.headers, b"", time.time())
        return Answer(verdict, response.status, response.headers, data, parsed, ttfb, content_type)
    finally:
        response.release()


async def stream(
    session: ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    limits: AttemptLimits,
) -> OpenStream | Failed:
    """Send a stream request and read up to its first data event.

    On success the response stays open and belongs to the caller.
    """
    started = time.monotonic()
    opened = await _open(session, url, body, headers, limits, started)
    if isinstance(opened, Failed):
        return opened
    response = opened
    keep_open = False
    try:
        if not 200 <= response.status < 300:
            return await _fail_from_status(response, limits)
        if response.content_type != "text/event-stream":
            return Failed(BAD_RESPONSE_VERDICT, detail=f"not a stream ({response.content_type})")
        verdict = classify_response(response.status, response.headers, b"", time.time())
        decoder = SSEDecoder()
        result = await _first_event(response, decoder, limits, started)
        if isinstance(result, Failed):
            return result
        events, parsed = result
        keep_open = True
        return OpenStream(verdict, response, decoder, events, parsed, time.monotonic() - started)
    finally:
        if not keep_open:
            response.close()


async def _first_event(
    response: ClientResponse, decoder: SSEDecoder, limits: AttemptLimits, started: float
) -> tuple[list[SSEEvent], list[Any]] | Failed:
    """Read until the first data event that is a real answer chunk."""
    content = response.content
    events: list[SSEEvent] = []
    parsed: list[Any] = []
    try:
        async with _timeout_at(min(limits.deadline, started + limits.first_byte)):
            while True:
                try:
                    chunk = await content.readany()
                except aiohttp.ClientPayloadError:
                    chunk = take_buffered(content)
                    if not chunk:
                        return Failed(CONNECT_ERROR_VERDICT, detail="reset before the answer")
                    new = decoder.feed(chunk) + decoder.flush()
                    if not _accept(new, events, parsed):
                        return Failed(CONNECT_ERROR_VERDICT, detail="reset before the answer")
                    return events, parsed
                new = decoder.feed(chunk) if chunk else decoder.flush()
                first = len(parsed)
                answered = _accept(new, events, parsed)
                verdict = _screen(new[0], parsed[first]) if new else None
                if verdict is not None:
                    return Failed(verdict, detail="error or empty stream before the answer")
                if answered:
                    return events, parsed
                if not chunk:
                    return Failed(BAD_RESPONSE_VERDICT, detail="stream ended before any data")
    except TimeoutError:
        return Failed(TIMEOUT_VERDICT, detail="no data event in time")
    except (aiohttp.ClientError, OSError):
        return Failed(CONNECT_ERROR_VERDICT, detail="reset before the answer")
    except SSEError:
        return Failed(BAD_RESPONSE_VERDICT, detail="broken event stream")


def _screen(event: SSEEvent, obj: Any) -> Verdict | None:
    """Before the first answer chunk: an error event, `[DONE]` or invalid JSON is a failure.

    Only the first event of a read decides; later ones are the relay's business. `obj` is
    its JSON as `_accept` parsed it (None for invalid JSON, and for a JSON `null`).
    """
    if event.data == DONE_DATA:
        return BAD_RESPONSE_VERDICT
    if obj is None:
        try:
            loads(event.data)  # parsed only on this rare path, to tell null from invalid
        except ValueError:
            return BAD_RESPONSE_VERDICT
        return None
    if is_error_event(obj):
        return BAD_RESPONSE_VERDICT
    return None


def _accept(new: list[SSEEvent], events: list[SSEEvent], parsed: list[Any]) -> bool:
    """Append decoded events; True once a data event that answers has been seen."""
    for event in new:
        events.append(event)
        parsed.append(None if event.data == DONE_DATA else loads_or_none(event.data))
    return any(obj is not None for obj in parsed)


def is_success(result: Answer | OpenStream | Failed) -> bool:
    return not isinstance(result, Failed) and result.verdict.outcome is Outcome.OK
