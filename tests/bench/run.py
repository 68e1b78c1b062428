"""`make bench` / `make bench-compare`: the proxy side by side with the upstream alone.

Every case runs against the fast upstream directly and through the proxy (and, with
`--compare`, through the bare aiohttp passthrough, nginx and LiteLLM), interleaved within each
repetition so drifting machine load hits every target alike. Medians of the repetitions, the
ratio to direct and to each reference, and the issue's targets are printed as one table and
written as JSON and markdown to `tests/bench/results/`.

Environment: BENCH_QUICK=1 (a ~1 minute smoke run), BENCH_REPS, BENCH_DURATION (seconds per
load run), BENCH_LOG_LEVEL (the proxy's log level, default warning).
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.bench import report
from tests.bench.cases import Case, Options, cases, options
from tests.bench.load import measure, one_line, run_sse, run_wrk
from tests.bench.references import apt_install, start_litellm, start_nginx
from tests.bench.stats import median
from tests.bench.targets import (
    BENCH_DIR,
    REPO,
    Pinning,
    Target,
    cpu_busy,
    measure_startups,
    start_bare,
    start_proxy,
    start_upstream,
)

RESULTS = BENCH_DIR / "results"


# -- the run ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": commit + ("+local changes" if dirty else ""),
    }


def start_references(
    pinning: Pinning, workdir: Path, upstream: Target, models: list[str]
) -> tuple[list[Target], dict[str, str]]:
    started: list[Target] = []
    failed: dict[str, str] = {}
    starters: list[tuple[str, Callable[[], Target]]] = [
        ("bare", lambda: start_bare(pinning, workdir, upstream.port)),
        ("nginx", lambda: start_nginx(pinning, workdir, upstream.port)),
        ("litellm", lambda: start_litellm(pinning, workdir, upstream.port, models)),
    ]
    for name, start in starters:
        print(f"starting {name}...", flush=True)
        try:
            started.append(start())
        except Exception as exc:  # one reference failing must not end the run
            failed[name] = str(exc)
            print(f"  {name} unavailable: {exc}", flush=True)
    return started, failed


def warm_up(pinning: Pinning, target: Target, case_list: list[Case]) -> None:
    run_wrk(pinning, target, 16, 1)
    run_sse(pinning, target, case_list[3], 0.5)


def main(argv: list[str] | None = None) -> int:
    opts = options(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 streams need ~3,000 fds
    missing = apt_install("wrk", "wrk")
    if missing is not None:
        print(f"bench: {missing}", file=sys.stderr)
        return 2
    # Start-up is measured as an installed package or a container image would start: with
    # its bytecode compiled (with PYTHONDONTWRITEBYTECODE set, every start would compile
    # every changed module again).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "proxy")], check=False)
    pinning = Pinning.detect()
    pinning.pin_self()
    load_start = os.getloadavg()
    busy_start = cpu_busy()
    started_at = datetime.datetime.now(datetime.UTC)
    case_list = cases(opts)
    print(f"bench: {pinning.describe()}")
    busy_text = "?" if busy_start is None else f"{busy_start:.0%}"
    print(
        f"bench: before the run: CPU {busy_text} busy, load average {load_start[0]:.2f}",
        flush=True,
    )
    if busy_start is not None and busy_start > 0.1:
        print("bench: other processes are using the CPU; expect noisy numbers", flush=True)

    with tempfile.TemporaryDirectory(prefix="llmproxy-bench-") as tmp:
        workdir = Path(tmp)
        upstream = start_upstream(pinning, workdir)
        direct = Target(
            "direct", upstream.port, cpu_pid=upstream.proc.pid if upstream.proc else None
        )
        servers: list[Target] = []
        try:
            ceiling = upstream_ceiling(pinning, direct, case_list, opts)
            print(
                f"bench: fast upstream alone (load generator on the other core): "
                f"{ceiling['rps']:,.0f} req/s non-stream, "
                f"{ceiling['events_per_s']:,.0f} events/s streamed",
                flush=True,
            )
            print("measuring proxy start-up...", flush=True)
            startup_s, idle_rss = measure_startups(
                pinning, workdir, upstream.port, opts.log_level, opts.startups
            )
            proxy = start_proxy(pinning, workdir, upstream.port, opts.log_level)
            servers.append(proxy)
            failed: dict[str, str] = {}
            if opts.compare:
                models = sorted({"bench", *(c.model for c in case_list)})
                references, failed = start_references(pinning, workdir, upstream, models)
                servers += references
            targets = [direct, *servers]
            for target in servers:
                warm_up(pinning, target, case_list)
            samples = run_cases(pinning, targets, case_list, opts)
            peaks = {t.name: t.hwm_kib() for t in servers}
        finally:
            for server in servers:
                server.stop()
            upstream.stop()

    startup = {t.name: [t.startup_s] for t in servers if t.startup_s is not None}
    idle = {t.name: [t.idle_rss_kib] for t in servers if t.idle_rss_kib is not None}
    startup["proxy"] = startup_s
    idle["proxy"] = idle_rss
    result: dict[str, Any] = {
        "meta": {
            "date": started_at.isoformat(timespec="seconds"),
            "machine": machine(),
            "pinning": pinning.describe(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "cpu_busy_start": busy_start,
            "cpu_busy_end": cpu_busy(),
            "reps": opts.reps,
            "duration_s": opts.duration,
            "quick": opts.quick,
            "compare": opts.compare,
            "proxy_log_level": opts.log_level,
            "references_failed": failed,
        },
        "ceiling": ceiling,
        "cases": {c.name: {"title": c.title, "kind": c.kind} for c in case_list},
        "samples": samples,
        "startup_s": startup,
        "idle_rss_kib": idle,
        "peak_rss_kib": peaks,
    }
    result["summary"] = summarise(samples)
    result["goals"] = report.goals(result)
    text = report.render(result)
    print()
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem = ("compare-" if opts.compare else "bench-") + started_at.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{stem}.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    (RESULTS / f"{stem}.md").write_text(text + "\n")
    print(f"\nresults: {RESULTS / stem}.json and .md")
    return 0


def upstream_ceiling(
    pinning: Pinning, direct: Target, case_list: list[Case], opts: Options
) -> dict[str, float]:
    """The fast upstream on its own, driven from the other core: what it can do at most."""
    duration = min(3.0, max(1.0, opts.duration))
    plain = run_wrk(pinning, direct, 64, duration, role="server")
    streams = run_sse(pinning, direct, case_list[3], duration, role="server")
    return {"rps": plain["rps"], "events_per_s": streams["events_per_s"]}


def run_cases(
    pinning: Pinning, targets: list[Target], case_list: list[Case], opts: Options
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        c.name: {t.name: [] for t in targets} for c in case_list
    }
    for rep in range(opts.reps):
        for case in case_list:
            if case.kind == "hold" and rep > 0:
                continue  # memory, not speed: once is enough
            for target in targets:
                if target.proc is not None and not target.alive():
                    continue
                try:
                    result = measure(pinning, target, case, opts)
                except (RuntimeError, ValueError) as exc:
                    result = {"failed": str(exc)[-300:]}
                    print(f"  {case.name:<20} {target.name:<8} failed: {exc}", flush=True)
                else:
                    label = f"{rep + 1}/{opts.reps}" if case.kind != "hold" else "1/1"
                    print(one_line(case, target, label, result), flush=True)
                samples[case.name][target.name].append(result)
    return samples


_METRICS = (
    "rps", "p50_ms", "p99_ms", "events_per_s", "ttfb_p50_ms", "ttfb_p99_ms", "total_p50_ms",
    "streams", "errors", "rss_peak_kib", "cpu_us_per_req", "cpu_us_per_event",
)  # fmt: skip


def summarise(
    samples: dict[str, dict[str, list[dict[str, Any]]]],
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Median of each metric over the repetitions, per case and target."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for case, by_target in samples.items():
        out[case] = {}
        for target, runs in by_target.items():
            good = [r for r in runs if "failed" not in r]
            out[case][target] = {
                m: median(r.get(m) for r in good) for m in _METRICS if any(m in r for r in good)
            }
            if "errors" in out[case][target]:
                out[case][target]["errors"] = float(sum(r.get("errors", 0) for r in good))
    return out


if __name__ == "__main__":
    sys.exit(main())
