"""The benchmark's stream load generator: concurrent SSE requests, timed per stream.

Each worker holds one keep-alive connection and sends stream requests back to back until the
duration is over (or exactly one with `--once`, to hold many streams open at the same time).
Per stream it records the time to the first complete event (TTFB), the total time and the
number of events, and checks the stream is whole: the expected event count and `[DONE]` last.
Prints one JSON object (see `tests.bench.stats.summarise_streams`)::

    python -m tests.bench.sseclient --url http://127.0.0.1:8000/v1/chat/completions \\
        --model bench-s50-d0 --concurrency 16 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
import orjson

from tests.bench.stats import StreamSample, summarise_streams

_DONE_TAIL = b"data: [DONE]\n\n"


async def one_stream(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> StreamSample:
    """Send one stream request and read it to the end."""
    started = time.perf_counter()
    first: float | None = None
    events = 0
    last = b""
    tail = b""
    try:
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                await response.read()
                return StreamSample(ok=False, error=f"status {response.status}")
            async for chunk in response.content.iter_any():
                # Count event ends (blank lines), also when one is split across two reads.
                found = chunk.count(b"\n\n") + (1 if last == b"\n" and chunk[:1] == b"\n" else 0)
                if found and first is None:
                    first = time.perf_counter()
                events += found
                last = chunk[-1:]
                tail = (tail + chunk)[-len(_DONE_TAIL) :]
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return StreamSample(ok=False, error=type(exc).__name__)
    ended = time.perf_counter()
    if first is None or not tail.endswith(_DONE_TAIL):
        return StreamSample(ok=False, error="incomplete stream", events=max(events - 1, 0))
    return StreamSample(
        ok=True,
        ttfb=first - started,
        total=ended - started,
        events=events - 1,  # minus [DONE]
    )


async def run(
    url: str, model: str, key: str, concurrency: int, duration: float, once: bool, expect: int
) -> dict[str, object]:
    body = orjson.dumps(
        {
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": "Say something."}],
        }
    )
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    samples: list[StreamSample] = []
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=300)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(deadline: float) -> None:
            while True:
                samples.append(await one_stream(session, url, body, headers))
                if once or time.perf_counter() >= deadline:
                    return

        started = time.perf_counter()
        await asyncio.gather(*(worker(started + duration) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return summarise_streams(samples, elapsed, expect)


def main() -> None:
    parser = argparse.ArgumentParser(description="SSE load generator for the benchmark")
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default="bench-s50-d0")
    parser.add_argument("--key", default="bench-proxy-key")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--once", action="store_true", help="one stream per worker")
    parser.add_argument("--expect", type=int, default=0, help="data events per stream (0: any)")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        run(args.url, args.model, args.key, args.concurrency, args.duration, args.once, args.expect)
    )
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
