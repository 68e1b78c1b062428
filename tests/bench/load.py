"""Running one case against one target: wrk for non-stream load, the SSE client for streams.

Each run also charges the server's CPU time (from /proc) to the requests or events it served.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import orjson

from tests.bench.cases import PLAIN_BODY, Case, Options
from tests.bench.stats import parse_wrk
from tests.bench.targets import BENCH_DIR, REPO, Pinning, Target, python_env


def run_wrk(pinning: Pinning, target: Target, concurrency: int, duration: float,
            role: str = "load") -> dict[str, Any]:  # fmt: skip
    argv = pinning.wrap(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(BENCH_DIR / "post.lua"),
            target.url(),
        ],
        role,
    )
    env = dict(os.environ, BENCH_BODY=PLAIN_BODY, BENCH_KEY=target.auth)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    return parse_wrk(done.stdout + done.stderr)


def run_sse(
    pinning: Pinning,
    target: Target,
    case: Case,
    duration: float,
    *,
    once: bool = False,
    watch: Target | None = None,
    role: str = "load",
) -> dict[str, Any]:
    argv = [
        sys.executable, "-m", "tests.bench.sseclient", "--url", target.url(),
        "--model", case.model, "--key", target.auth, "--concurrency", str(case.concurrency),
        "--duration", str(duration), "--expect", str(case.events),
    ]  # fmt: skip
    if once:
        argv.append("--once")
    proc = subprocess.Popen(
        pinning.wrap(argv, role),
        cwd=REPO,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    peak: int | None = None
    if watch is not None:
        # Sample the server's RSS while the streams are open; the maximum is the case's figure.
        while proc.poll() is None:
            rss = watch.rss_kib()
            if rss is not None and (peak is None or rss > peak):
                peak = rss
            time.sleep(0.1)
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"sseclient failed: {err.decode()[-500:]}")
    result: dict[str, Any] = orjson.loads(out)
    if peak is not None:
        result["rss_peak_kib"] = peak
    return result


def measure(pinning: Pinning, target: Target, case: Case, opts: Options) -> dict[str, Any]:
    """One load run; also the server's CPU time per request or event, which (unlike
    throughput) does not move when other processes share the machine."""
    cpu_before = target.cpu_seconds()
    if case.kind == "wrk":
        result = run_wrk(pinning, target, case.concurrency, opts.duration)
    elif case.kind == "sse":
        result = run_sse(pinning, target, case, opts.duration)
    else:
        result = run_sse(pinning, target, case, 0, once=True, watch=target)
    cpu_after = target.cpu_seconds()
    if cpu_before is not None and cpu_after is not None:
        cpu_us = (cpu_after - cpu_before) * 1e6
        if case.kind == "wrk" and result["requests"]:
            result["cpu_us_per_req"] = cpu_us / result["requests"]
        elif case.kind != "wrk" and result["events"]:
            result["cpu_us_per_event"] = cpu_us / result["events"]
    return result


def one_line(case: Case, target: Target, rep: str, result: dict[str, Any]) -> str:
    if case.kind == "wrk":
        text = f"{result['rps']:,.0f} req/s, p50 {result['p50_ms']:.2f} ms"
        text += f", p99 {result['p99_ms']:.2f} ms"
        if "cpu_us_per_req" in result:
            text += f", {result['cpu_us_per_req']:.0f} us CPU/req"
    else:
        text = f"{result['events_per_s']:,.0f} events/s, ttfb p50 {result['ttfb_p50_ms']:.2f} ms"
        if "cpu_us_per_event" in result:
            text += f", {result['cpu_us_per_event']:.1f} us CPU/event"
        if "rss_peak_kib" in result:
            text += f", {result['streams']} streams, RSS {result['rss_peak_kib'] / 1024:.0f} MiB"
    if result.get("errors"):
        text += f"  ERRORS {result['errors']} {result.get('error_kinds', '')}"
    return f"  {case.name:<20} {target.name:<8} {rep:<5} {text}"
