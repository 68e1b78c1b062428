"""The benchmark's cases and run options: what load, how long, how many times."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

PLAIN_BODY = '{"model":"bench","messages":[{"role":"user","content":"Say something."}]}'


@dataclass(frozen=True, slots=True)
class Case:
    """One load shape. `kind`: wrk (non-stream), sse (streams for a duration), hold (once)."""

    name: str
    title: str
    kind: str
    concurrency: int
    model: str = "bench"
    events: int = 0


@dataclass(frozen=True, slots=True)
class Options:
    compare: bool
    quick: bool
    reps: int
    duration: float
    log_level: str
    startups: int
    hold_model: str
    hold_events: int


def options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description="llmproxy benchmark (make bench)")
    parser.add_argument("--compare", action="store_true", help="add bare, nginx and LiteLLM")
    args = parser.parse_args(argv)
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    reps = int(os.environ.get("BENCH_REPS", "1" if quick else "3"))
    duration = float(os.environ.get("BENCH_DURATION", "1.5" if quick else "5"))
    hold_events = 6 if quick else 20  # 0.5 s apart: streams held open 3 s or 10 s
    return Options(
        compare=args.compare,
        quick=quick,
        reps=max(1, reps),
        duration=duration,
        log_level=os.environ.get("BENCH_LOG_LEVEL", "warning"),
        startups=2 if quick else 5,
        hold_model=f"bench-s{hold_events}-d500",
        hold_events=hold_events,
    )


def cases(opts: Options) -> list[Case]:
    return [
        Case("plain_c1", "non-stream, concurrency 1", "wrk", 1),
        Case("plain_c16", "non-stream, concurrency 16", "wrk", 16),
        Case("plain_c64", "non-stream, concurrency 64", "wrk", 64),
        Case(
            "stream_nodelay_c64", "stream 50 events, no delay, c=64", "sse", 64, "bench-s50-d0", 50
        ),
        Case(
            "stream_paced_c64",
            "stream 50 events, 10 ms apart, c=64",
            "sse",
            64,
            "bench-s50-d10",
            50,
        ),
        Case(
            "stream_paced_c16",
            "stream 50 events, 10 ms apart, c=16",
            "sse",
            16,
            "bench-s50-d10",
            50,
        ),
        Case(
            "open_streams_1000",
            "1,000 streams held open",
            "hold",
            1000,
            opts.hold_model,
            opts.hold_events,
        ),
    ]
