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

The behaviours and the default answers live in `tests.fakes.answers`; they are
re-exported here so that tests import everything from this module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import functools
import signal
import socket
import struct
import sys
import termios
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson
from aiohttp import web
from multidict import CIMultiDict

from tests.fakes.answers import (
    Behaviour,
    Hang,
    Reply,
    Reset,
    SeenRequest,
    Stream,
    chat_completion_body,
    chat_stream_events,
    choose_automatically,
    choose_by_model,
    default_body,
    default_stream,
    sse_event,
)

__all__ = [
    "DONE",
    "Behaviour",
    "Chooser",
    "FakeUpstream",
    "Hang",
    "Reply",
    "Reset",
    "SeenRequest",
    "Stream",
    "UpstreamFactory",
    "chat_completion_body",
    "chat_stream_events",
    "choose_automatically",
    "choose_by_model",
    "default_body",
    "default_stream",
    "main",
    "sse_event",
]

DONE = b"data: [DONE]\n\n"


Chooser = Callable[[SeenRequest], Behaviour]


class UpstreamFactory(Protocol):
    """The `upstream_factory` fixture: starts a FakeUpstream, closed at teardown."""

    async def __call__(self, name: str = "fake") -> FakeUpstream: ...


# --- The server ----------------------------------------------------------------------


def _encode(event: object) -> bytes:
    if isinstance(event, bytes | bytearray | memoryview):
        return bytes(event)
    return sse_event(event)


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
