"""Profile the proxy under one benchmark load with py-spy; print where the time goes.

    python -m tests.bench.profile plain_c16 [--seconds 10] [--py-spy PATH]

Starts the fast upstream and the proxy as `make bench` does (pinned likewise), runs the load
for that case while `py-spy record` samples the proxy, then prints the functions with the most
samples, by own time and including callees. The raw collapsed stacks and an SVG flame graph go
to `tests/bench/results/profile-<case>.{txt,svg}`. py-spy comes from PyPI (`pip install py-spy`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from tests.bench.cases import Options, cases
from tests.bench.load import run_sse, run_wrk
from tests.bench.run import RESULTS
from tests.bench.targets import Pinning, Target, start_proxy, start_upstream


def top_functions(collapsed: str, limit: int = 25) -> str:
    """Own and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return "no samples"
    lines = [f"{total} samples", "", "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(limit)]
    lines += ["", "including callees:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(limit)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="profile the proxy under a bench load")
    parser.add_argument("case", help="a case name of tests/bench/run.py, e.g. plain_c16")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    args = parser.parse_args()
    opts = Options(False, False, 1, args.seconds, "warning", 0, "bench-s20-d500", 20)
    case = {c.name: c for c in cases(opts)}[args.case]
    pinning = Pinning.detect()
    pinning.pin_self()
    RESULTS.mkdir(exist_ok=True)
    raw = RESULTS / f"profile-{case.name}.txt"
    svg = RESULTS / f"profile-{case.name}.svg"
    with tempfile.TemporaryDirectory(prefix="llmproxy-profile-") as tmp:
        upstream = start_upstream(pinning, Path(tmp))
        proxy: Target | None = None
        try:
            proxy = start_proxy(pinning, Path(tmp), upstream.port, "warning")
            assert proxy.proc is not None
            run_wrk(pinning, proxy, 16, 1)  # warm up
            spy = [args.py_spy, "record", "--pid", str(proxy.proc.pid), "--rate", str(args.rate),
                   "--duration", str(int(args.seconds))]  # fmt: skip
            svg_run = threading.Thread(
                target=subprocess.run,
                args=([*spy, "--format", "flamegraph", "-o", str(svg)],),
                kwargs={"capture_output": True},
            )
            raw_run = subprocess.Popen(
                [*spy, "--format", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            svg_run.start()
            if case.kind == "wrk":
                result = run_wrk(pinning, proxy, case.concurrency, args.seconds)
                print(f"{case.name}: {result['rps']:,.0f} req/s (profiled, so slower)")
            else:
                result = run_sse(pinning, proxy, case, args.seconds)
                print(f"{case.name}: {result['events_per_s']:,.0f} events/s (profiled)")
            raw_run.wait()
            svg_run.join()
        finally:
            if proxy is not None:
                proxy.stop()
            upstream.stop()
    print(top_functions(raw.read_text()))
    print(f"\nflame graph: {svg}\ncollapsed stacks: {raw}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
