"""A fast fake OpenAI upstream for the benchmark: a raw asyncio Protocol, answers pre-encoded.

It must never be the bottleneck, so there is no HTTP framework here: requests are split on
`\\r\\n\\r\\n` and `Content-Length` (or a chunked body), and every answer is bytes built once.
What it answers is chosen by the request body alone:

    "stream": true and model "bench-s<N>-d<MS>"  -> N chat chunks, MS milliseconds apart
                                                    (the first at once), then `[DONE]`
    "stream": true, any other model               -> 50 chunks, no delay
    anything else (POST)                          -> one chat.completion JSON body
    GET                                           -> 200 {"status":"ok"} (readiness)

Streams use chunked transfer encoding so connections stay alive between requests, as real
upstreams do. Run on its own::

    python -m tests.bench.fastupstream --port 9950
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
from collections.abc import Callable

import orjson

_STREAM_MODEL = re.compile(rb'"model"\s*:\s*"bench-s(\d+)-d(\d+)"')
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:\s*chunked", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)

_CREATED = 1_700_000_000
_ID = "chatcmpl-bench0000000000000000"


def completion_body() -> bytes:
    """A typical non-stream chat.completion (about 400 bytes)."""
    return orjson.dumps(
        {
            "id": _ID,
            "object": "chat.completion",
            "created": _CREATED,
            "model": "bench",
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "The quick brown fox jumps over the lazy dog. " * 3,
                        "refusal": None,
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
        }
    )


def stream_events(n: int) -> list[bytes]:
    """`n` SSE chat chunks (role first, `finish_reason` last) and `[DONE]`, one frame each."""
    n = max(n, 2)

    def chunk(delta: dict[str, str], finish: str | None) -> bytes:
        obj = {
            "id": _ID,
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": "bench",
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    frames = [chunk({"role": "assistant", "content": ""}, None)]
    frames += [chunk({"content": f" tok{i}"}, None) for i in range(1, n - 1)]
    frames.append(chunk({}, "stop"))
    frames.append(b"data: [DONE]\n\n")
    return frames


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_JSON_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"x-ratelimit-remaining-requests: 9999\r\nContent-Length: %d\r\n\r\n"
)
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_LAST_CHUNK = b"0\r\n\r\n"


class Answers:
    """Every answer as pre-encoded bytes, built once per stream shape."""

    def __init__(self) -> None:
        body = completion_body()
        self.plain = _JSON_HEAD % len(body) + body
        ready = b'{"status":"ok"}'
        self.ready = _JSON_HEAD % len(ready) + ready
        self._streams: dict[int, list[bytes]] = {}

    def stream_chunks(self, n: int) -> list[bytes]:
        """Chunk-encoded frames: the first carries the headers, the last the terminator."""
        chunks = self._streams.get(n)
        if chunks is None:
            frames = [_chunk(f) for f in stream_events(n)]
            frames[0] = _SSE_HEAD + frames[0]
            frames[-1] = frames[-1] + _LAST_CHUNK
            chunks = frames
            self._streams[n] = chunks
        return chunks


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection: parse requests, answer from `Answers`."""

    def __init__(self, answers: Answers) -> None:
        self._answers = answers
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False  # a paced stream is being written
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._serve_buffered()

    def _serve_buffered(self) -> None:
        buf = self._buf
        while buf and not self._busy and self._transport is not None:
            end = buf.find(b"\r\n\r\n")
            if end == -1:
                return
            head = bytes(buf[: end + 2])
            body_start = end + 4
            if _CHUNKED.search(head):
                parsed = _dechunk(buf, body_start)
                if parsed is None:
                    return
                body, consumed = parsed
            else:
                match = _CONTENT_LENGTH.search(head)
                length = int(match.group(1)) if match else 0
                if len(buf) < body_start + length:
                    return
                body = bytes(buf[body_start : body_start + length])
                consumed = body_start + length
            del buf[:consumed]
            self._close_after = _CLOSE.search(head) is not None
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if head.startswith(b"GET"):
            transport.write(self._answers.ready)
        elif _STREAM_TRUE.search(body) is None:
            transport.write(self._answers.plain)
        else:
            match = _STREAM_MODEL.search(body)
            n, delay_ms = (int(match.group(1)), int(match.group(2))) if match else (50, 0)
            chunks = self._answers.stream_chunks(n)
            if delay_ms == 0:
                transport.write(b"".join(chunks))
            else:
                transport.write(chunks[0])
                self._busy = True
                self._pace(chunks, 1, delay_ms / 1000)
                return
        if self._close_after:
            transport.close()

    def _pace(self, chunks: list[bytes], index: int, delay: float) -> None:
        loop = asyncio.get_running_loop()

        def write_next() -> None:
            nonlocal index
            transport = self._transport
            if transport is None:
                return
            transport.write(chunks[index])
            index += 1
            if index < len(chunks):
                self._timer = loop.call_later(delay, write_next)
                return
            self._timer = None
            self._busy = False
            if self._close_after:
                transport.close()
            elif self._buf:
                self._serve_buffered()

        self._timer = loop.call_later(delay, write_next)


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """A complete chunked body starting at `pos`: (body, end offset), or None if incomplete."""
    parts: list[bytes] = []
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end == -1:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        start = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", start)
            return (b"".join(parts), trailer_end + 2) if trailer_end != -1 else None
        if len(buf) < start + size + 2:
            return None
        parts.append(bytes(buf[start : start + size]))
        pos = start + size + 2


async def serve(host: str, port: int, ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    answers = Answers()
    server = await loop.create_server(
        lambda: UpstreamProtocol(answers), host, port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready(bound)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9950)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port, lambda port: print(f"listening {port}", flush=True)))


if __name__ == "__main__":
    main()
