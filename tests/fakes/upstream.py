"""A scriptable fake OpenAI-compatible upstream: a real aiohttp server on 127.0.0.1.

Each test scripts what the next requests get::

    upstream.script(Reply(429, headers={"Retry-After": "1"}), Stream(first_delay=0.5))
    upstream.script_key("key-b", Reset())

Answers are taken, in order, from the queue of the request's key (`script_key`), then
from the shared queue (`script`), then `default`, then `chooser` (automatic: the
default completion, streamed when the body says `"stream": true`). Every request is
recorded in `seen`, with a `disconnected` flag set when the client went away first.

Run on its own (demo, benchmarks), behaviour is chosen by the model name instead::

    python -m tests.fakes.upstream --port 9901 --name demo [--event-delay 0.05]

`ratelimited` in the model name -> 429 with `Retry-After: 30`; `error` -> 500;
`slow` -> 1 s before the first event (or before a non-stream answer); anything
else -> the default answer, streamed with `--event-delay` between events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import functools
import secrets
import signal
import socket
import struct
import sys
import termios
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson
from aiohttp import web
from multidict import CIMultiDict

DONE = b"data: [DONE]\n\n"


@dataclass
class Reply:
    """A plain HTTP answer. With `json` and `body` both None: the default body for the path."""

    status: int = 200
    json: object | None = None
    body: bytes | None = None  # raw bytes (HTML, invalid JSON); Content-Type defaults to JSON
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the headers


@dataclass
class Stream:
    """An SSE answer.

    `events`: dict (or any JSON value) -> `data: <json>\\n\\n`; str -> `data: <str>\\n\\n`;
    bytes -> written raw, one write each (an empty bytes event writes nothing: a pause of
    `delay`). None -> the default stream for the path. `end`: "close" ends cleanly,
    "reset" aborts the TCP connection (RST) with no chunked terminator, "hang" stays
    open and silent until the client goes away.
    """

    events: list[object] | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    first_delay: float = 0.0  # before the first event; the headers go out at once
    header_delay: float = 0.0  # before the headers
    delay: float = 0.0  # before each later event, [DONE] included
    done: bool = True  # append `data: [DONE]` (never to the default Responses stream)
    end: Literal["close", "reset", "hang"] = "close"

    def __post_init__(self) -> None:
        if self.end not in ("close", "reset", "hang"):
            raise ValueError(f'Stream.end must be "close", "reset" or "hang", got {self.end!r}')


@dataclass
class Reset:
    """Abort the connection (RST) before any response bytes."""


@dataclass
class Hang:
    """Read the request, then never answer (until the client goes away)."""


Behaviour = Reply | Stream | Reset | Hang


@dataclass
class SeenRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str] = field(repr=False)  # lower-case names
    body: bytes = field(repr=False)
    json: Any
    key: str | None = field(repr=False)  # Bearer token, else `api-key`, else `x-api-key`
    at: float  # time.monotonic() when received
    disconnected: bool = False

    @property
    def model(self) -> str:
        model = self.json.get("model") if isinstance(self.json, dict) else None
        return model if isinstance(model, str) else "fake-model"

    @property
    def wants_stream(self) -> bool:
        return isinstance(self.json, dict) and self.json.get("stream") is True


Chooser = Callable[[SeenRequest], Behaviour]


class UpstreamFactory(Protocol):
    """The `upstream_factory` fixture: starts a FakeUpstream, closed at teardown."""

    async def __call__(self, name: str = "fake") -> FakeUpstream: ...


# --- Answers -------------------------------------------------------------------------


def sse_event(data: object, *, event: str | None = None) -> bytes:
    """One SSE event: a str is sent as is, anything else as compact JSON."""
    payload = data if isinstance(data, str) else orjson.dumps(data).decode()
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def _encode(event: object) -> bytes:
    if isinstance(event, bytes | bytearray | memoryview):
        return bytes(event)
    return sse_event(event)


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _words(value: object) -> int:
    """A deterministic stand-in for a token count."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        return sum(_words(v) for v in value.values())
    return 0


def _prompt_tokens(seen: SeenRequest) -> int:
    if not isinstance(seen.json, dict):
        return 1
    parts = [seen.json.get(k) for k in ("messages", "prompt", "input")]
    return max(1, sum(_words(p) for p in parts))


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _include_usage(seen: SeenRequest) -> bool:
    options = seen.json.get("stream_options") if isinstance(seen.json, dict) else None
    return isinstance(options, dict) and options.get("include_usage") is True


def chat_completion_body(model: str, text: str, *, prompt_tokens: int = 1) -> dict[str, Any]:
    """A complete `chat.completion` object answering `text`."""
    return {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(prompt_tokens, len(text.split())),
    }


def chat_stream_events(
    model: str,
    parts: Sequence[str],
    *,
    include_usage: bool = False,
    prompt_tokens: int = 1,
    finish_reason: str | None = "stop",
) -> list[object]:
    """`chat.completion.chunk` dicts sharing one id: a role chunk, one chunk per part, a
    chunk with `finish_reason` (left out when None) and, if asked, a usage chunk."""
    completion_id, created = _new_id("chatcmpl-"), int(time.time())

    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
        }

    events: list[object] = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": part}) for part in parts]
    if finish_reason is not None:
        events.append(chunk({}, finish_reason))
    if include_usage:
        usage = _usage(prompt_tokens, len("".join(parts).split()))
        events.append(chunk({}) | {"choices": [], "usage": usage})
    return events


def _text_completion_events(seen: SeenRequest, parts: Sequence[str]) -> list[object]:
    completion_id, created = _new_id("cmpl-"), int(time.time())

    def chunk(text: str, finish: str | None) -> dict[str, Any]:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        base = {"id": completion_id, "object": "text_completion", "created": created}
        return base | {"model": seen.model, "choices": [choice]}

    events: list[object] = [chunk(part, None) for part in parts]
    events.append(chunk("", "stop"))
    if _include_usage(seen):
        usage = _usage(_prompt_tokens(seen), len("".join(parts).split()))
        events.append(chunk("", None) | {"choices": [], "usage": usage})
    return events


def _response_object(seen: SeenRequest, text: str, *, response_id: str, done: bool) -> object:
    message = {
        "type": "message",
        "id": "msg_" + response_id.removeprefix("resp_"),
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    prompt, completion = _prompt_tokens(seen), len(text.split())
    usage = {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
    }
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed" if done else "in_progress",
        "model": seen.model,
        "output": [message] if done else [],
        "usage": usage if done else None,
    }


def _responses_events(seen: SeenRequest, parts: Sequence[str]) -> list[object]:
    response_id = _new_id("resp_")
    item_id = "msg_" + response_id.removeprefix("resp_")
    started = _response_object(seen, "", response_id=response_id, done=False)
    finished = _response_object(seen, "".join(parts), response_id=response_id, done=True)
    steps: list[tuple[str, dict[str, object]]] = [("response.created", {"response": started})]
    for part in parts:
        delta = {"item_id": item_id, "output_index": 0, "content_index": 0, "delta": part}
        steps.append(("response.output_text.delta", delta))
    steps.append(("response.completed", {"response": finished}))
    return [
        sse_event({"type": kind, "sequence_number": n} | data, event=kind)
        for n, (kind, data) in enumerate(steps)
    ]


def _model_object(model_id: str, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


def default_body(seen: SeenRequest, name: str) -> object:
    """The automatic non-stream answer for the request's path."""
    path, text = seen.path.rstrip("/"), f"Hello from {name}"
    if seen.method == "GET" and path.endswith("/models"):
        ids = (f"{name}-chat", f"{name}-embedding")
        return {"object": "list", "data": [_model_object(i, name) for i in ids]}
    if seen.method == "GET" and "/models/" in path:
        return _model_object(path.partition("/models/")[2], name)
    if path.endswith("/embeddings"):
        raw = seen.json.get("input") if isinstance(seen.json, dict) else None
        inputs = raw if isinstance(raw, list) else [raw]
        data = [
            {"object": "embedding", "index": i, "embedding": [0.125 * (i + 1)] * 8}
            for i in range(len(inputs))
        ]
        prompt = _prompt_tokens(seen)
        usage = {"prompt_tokens": prompt, "total_tokens": prompt}
        return {"object": "list", "data": data, "model": seen.model, "usage": usage}
    if path.endswith("/responses"):
        return _response_object(seen, text, response_id=_new_id("resp_"), done=True)
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        body = chat_completion_body(seen.model, text, prompt_tokens=_prompt_tokens(seen))
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}
        return body | {"id": _new_id("cmpl-"), "object": "text_completion", "choices": [choice]}
    return chat_completion_body(seen.model, text, prompt_tokens=_prompt_tokens(seen))


def default_stream(seen: SeenRequest, name: str) -> tuple[list[object], bool]:
    """The automatic stream for the request's path, and whether `[DONE]` may follow it."""
    path, parts = seen.path.rstrip("/"), ["Hello", " from", f" {name}"]
    if path.endswith("/responses"):
        return _responses_events(seen, parts), False
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        return _text_completion_events(seen, parts), True
    events = chat_stream_events(
        seen.model, parts, include_usage=_include_usage(seen), prompt_tokens=_prompt_tokens(seen)
    )
    return events, True


def _error(status_type: str, message: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": status_type, "param": None, "code": code}}


def choose_automatically(seen: SeenRequest) -> Behaviour:
    """The default answer, streamed when the request asks for a stream."""
    return Stream() if seen.wants_stream else Reply()


def choose_by_model(
    seen: SeenRequest, *, event_delay: float = 0.05, slow_delay: float = 1.0
) -> Behaviour:
    """Behaviour picked from the model name, for the standalone process."""
    model = seen.model
    if "ratelimited" in model:
        body = _error("requests", f"Rate limit reached for {model}.", "rate_limit_exceeded")
        return Reply(429, json=body, headers={"Retry-After": "30"})
    if "error" in model:
        return Reply(500, json=_error("server_error", "The server had an error.", None))
    slow = slow_delay if "slow" in model else 0.0
    if seen.wants_stream:
        return Stream(first_delay=slow, delay=event_delay)
    return Reply(delay=slow)


# --- The server ----------------------------------------------------------------------


def _key_of(headers: dict[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("api-key") or headers.get("x-api-key") or None


def _abort(request: web.BaseRequest) -> None:
    """Close the connection with a TCP RST: linger 0 turns close() into an abort."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _unsent(transport: asyncio.Transport) -> int:
    """Bytes not yet delivered: asyncio's buffer plus, on Linux, the kernel's send queue
    (which a reset would discard)."""
    pending = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            pending += struct.unpack("i", queued)[0]
    return pending


async def _drain(request: web.BaseRequest, limit: float = 2.0) -> None:
    """Wait (bounded, for a client that stopped reading) until the events written so far
    have reached the client, so that a reset right after does not swallow them."""
    transport = request.transport
    for _ in range(int(limit / 0.005)):
        if transport is None or transport.is_closing() or not _unsent(transport):
            return
        await asyncio.sleep(0.005)


async def _forever() -> None:
    await asyncio.get_running_loop().create_future()


class FakeUpstream:
    """A real HTTP server on 127.0.0.1 speaking enough of the OpenAI API, scripted per test."""

    def __init__(self, name: str = "fake", *, record: bool = True) -> None:
        self.name = name
        self.seen: list[SeenRequest] = []
        self.default: Behaviour | None = None
        self.chooser: Chooser = choose_automatically
        # A long-running standalone process must not grow `seen` forever.
        self._record = record
        self._script: deque[Behaviour] = deque()
        self._key_scripts: dict[str, deque[Behaviour]] = {}
        self._changed = asyncio.Event()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._runner: web.ServerRunner | None = None
        self._port: int | None = None
        self._closing = False

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeUpstream is not started: await start() first")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, port: int = 0) -> None:
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._port = runner, runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is None:
            return
        self._closing = True
        # Hanging handlers would otherwise hold the runner's shutdown for its full timeout.
        for task in list(self._handlers):
            task.cancel()
        runner, self._runner = self._runner, None
        await runner.cleanup()

    def script(self, *behaviours: Behaviour) -> None:
        """Queue answers for the next requests, in order (appends to what is queued)."""
        self._script.extend(behaviours)

    def script_key(self, key: str, *behaviours: Behaviour) -> None:
        """Queue answers for requests presenting `key`; they go before `script()`'s."""
        self._key_scripts.setdefault(key, deque()).extend(behaviours)

    async def wait_seen(self, count: int, timeout: float = 5) -> bool:
        """Wait until `count` requests have arrived; False on timeout."""
        return await self._wait_until(lambda: len(self.seen) >= count, timeout)

    async def wait_disconnected(self, index: int, timeout: float = 5) -> bool:
        """Wait until the client of `seen[index]` has gone away; False on timeout."""
        return await self._wait_until(
            lambda: len(self.seen) > index and self.seen[index].disconnected, timeout
        )

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        return predicate()

    def _notify(self) -> None:
        # Wake every current waiter, and give later ones a fresh event to wait on.
        self._changed.set()
        self._changed = asyncio.Event()

    def _next(self, seen: SeenRequest) -> Behaviour:
        queue = self._key_scripts.get(seen.key) if seen.key is not None else None
        if queue:
            return queue.popleft()
        if self._script:
            return self._script.popleft()
        if self.default is not None:
            return self.default
        return self.chooser(seen)

    def _mark_disconnected(self, seen: SeenRequest) -> None:
        if not self._closing:
            seen.disconnected = True
            self._notify()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        at = time.monotonic()
        # Not request.read(): that caps bodies at 1 MiB, and large bodies are worth testing.
        body = await request.content.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            parsed: Any = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        seen = SeenRequest(
            request.method, request.path, headers, body, parsed, _key_of(headers), at
        )
        if self._record:
            self.seen.append(seen)
            self._notify()
        behaviour = self._next(seen)
        task = asyncio.current_task()
        assert task is not None  # aiohttp runs every handler in its own task
        self._handlers.add(task)
        try:
            match behaviour:
                case Reply():
                    return await self._reply(seen, behaviour)
                case Stream():
                    return await self._stream(request, seen, behaviour)
                case Reset():
                    _abort(request)
                    return web.Response()  # never reaches the wire: aiohttp drops it quietly
                case Hang():
                    await _forever()
            raise AssertionError(f"not a behaviour: {behaviour!r}")
        except asyncio.CancelledError:
            # handler_cancellation: the client went away (or close() stopped us).
            self._mark_disconnected(seen)
            raise
        finally:
            self._handlers.discard(task)

    async def _reply(self, seen: SeenRequest, reply: Reply) -> web.StreamResponse:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.body is not None:
            body = reply.body
        else:
            payload = reply.json if reply.json is not None else default_body(seen, self.name)
            body = orjson.dumps(payload)
        headers = CIMultiDict({"Content-Type": "application/json"})
        headers.update(reply.headers)
        return web.Response(status=reply.status, body=body, headers=headers)

    async def _stream(
        self, request: web.BaseRequest, seen: SeenRequest, stream: Stream
    ) -> web.StreamResponse:
        if stream.header_delay:
            await asyncio.sleep(stream.header_delay)
        if stream.events is not None:
            events, done = stream.events, stream.done
        else:
            events, done_allowed = default_stream(seen, self.name)
            done = stream.done and done_allowed
        payloads = [_encode(e) for e in events] + ([DONE] if done else [])
        headers = CIMultiDict({"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        headers.update(stream.headers)
        response = web.StreamResponse(status=stream.status, headers=headers)
        try:
            await response.prepare(request)
            for i, payload in enumerate(payloads):
                pause = stream.first_delay if i == 0 else stream.delay
                if pause:
                    await asyncio.sleep(pause)
                if payload:
                    await response.write(payload)
            if stream.end == "close":
                await response.write_eof()
            elif stream.end == "reset":
                await _drain(request)
                _abort(request)
            else:
                await _forever()
        except ConnectionError:
            # A write found the client gone before handler cancellation reached us.
            self._mark_disconnected(seen)
        return response


# --- Standalone process ---------------------------------------------------------------


async def _serve(port: int, name: str, event_delay: float) -> int:
    upstream = FakeUpstream(name, record=False)
    upstream.chooser = functools.partial(choose_by_model, event_delay=event_delay)
    try:
        await upstream.start(port)
    except OSError as exc:
        print(f"fake upstream: cannot listen on 127.0.0.1:{port}: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"fake upstream {name!r} listening on {upstream.base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await upstream.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.upstream",
        description="A fake OpenAI-compatible upstream; behaviour chosen by model name.",
    )
    parser.add_argument("--port", type=int, default=9901, help="0 picks a free port")
    parser.add_argument("--name", default="fake", help="used in the answer text")
    parser.add_argument(
        "--event-delay", type=float, default=0.05, help="seconds between stream events"
    )
    args = parser.parse_args(argv)
    return asyncio.run(_serve(args.port, args.name, args.event_delay))


if __name__ == "__main__":
    sys.exit(main())
