"""The benchmark's table and the issue's targets, computed from a run's summary (pure)."""

from __future__ import annotations

from typing import Any

from tests.bench.stats import fmt, markdown_table, median, ratio

REFERENCES = ("bare", "nginx", "litellm")

# (case, metric, label, unit); a unit of "MB" means the value is KiB, shown in MB (10^6 bytes).
ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("plain_c1", "rps", "non-stream c=1: throughput", "req/s"),
    ("plain_c1", "p50_ms", "non-stream c=1: latency p50", "ms"),
    ("plain_c1", "p99_ms", "non-stream c=1: latency p99", "ms"),
    ("plain_c1", "cpu_us_per_req", "non-stream c=1: server CPU per request", "us"),
    ("plain_c16", "rps", "non-stream c=16: throughput", "req/s"),
    ("plain_c16", "p50_ms", "non-stream c=16: latency p50", "ms"),
    ("plain_c16", "p99_ms", "non-stream c=16: latency p99", "ms"),
    ("plain_c16", "cpu_us_per_req", "non-stream c=16: server CPU per request", "us"),
    ("plain_c64", "rps", "non-stream c=64: throughput", "req/s"),
    ("plain_c64", "p99_ms", "non-stream c=64: latency p99", "ms"),
    ("stream_nodelay_c64", "events_per_s", "stream, no delay, c=64: events", "ev/s"),
    ("stream_nodelay_c64", "ttfb_p50_ms", "stream, no delay, c=64: TTFB p50", "ms"),
    ("stream_nodelay_c64", "cpu_us_per_event", "stream, no delay, c=64: CPU per event", "us"),
    ("stream_paced_c64", "events_per_s", "stream, 10 ms, c=64: events", "ev/s"),
    ("stream_paced_c64", "ttfb_p50_ms", "stream, 10 ms, c=64: TTFB p50", "ms"),
    ("stream_paced_c64", "ttfb_p99_ms", "stream, 10 ms, c=64: TTFB p99", "ms"),
    ("stream_paced_c64", "total_p50_ms", "stream, 10 ms, c=64: total p50", "ms"),
    ("stream_paced_c64", "cpu_us_per_event", "stream, 10 ms, c=64: CPU per event", "us"),
    ("stream_paced_c16", "ttfb_p50_ms", "stream, 10 ms, c=16: TTFB p50", "ms"),
    ("stream_paced_c16", "ttfb_p99_ms", "stream, 10 ms, c=16: TTFB p99", "ms"),
    ("open_streams_1000", "streams", "1,000 open streams: completed", ""),
    ("open_streams_1000", "rss_peak_kib", "1,000 open streams: server RSS", "MB"),
)


def _mb(kib: float | None) -> float | None:
    return None if kib is None else kib * 1024 / 1e6


def _value(summary: dict[str, Any], case: str, target: str, metric: str) -> float | None:
    value = summary.get(case, {}).get(target, {}).get(metric)
    return float(value) if value is not None else None


def _errors(summary: dict[str, Any], case: str, target: str) -> int:
    return int(summary.get(case, {}).get(target, {}).get("errors") or 0)


def _columns(result: dict[str, Any]) -> list[str]:
    present = {t for by_target in result["summary"].values() for t in by_target}
    return ["direct", "proxy", *(r for r in REFERENCES if r in present)]


def table(result: dict[str, Any]) -> str:
    summary = result["summary"]
    columns = _columns(result)
    refs = [c for c in columns if c in REFERENCES]
    header = ["case", *columns, "proxy/direct", *(f"proxy/{r}" for r in refs)]
    rows: list[list[str]] = []
    for case, metric, label, unit in ROWS:
        values = {t: _value(summary, case, t, metric) for t in columns}
        if unit == "MB":
            values = {t: _mb(v) for t, v in values.items()}
        cells = [f"{label} ({unit})" if unit else label]
        for target in columns:
            cell = fmt(values[target])
            errors = _errors(summary, case, target)
            cells.append(f"{cell} ({errors} err)" if errors else cell)
        for other in ["direct", *refs]:
            cells.append(fmt(ratio(values["proxy"], values[other]), "x"))
        rows.append(cells)
    peaks = {k: [v] for k, v in result["peak_rss_kib"].items()}
    extra = [
        ("start-up to first 200 (s)", result["startup_s"], 1.0),
        ("idle RSS (MB)", result["idle_rss_kib"], 1024 / 1e6),
        ("peak RSS, whole run (MB)", peaks, 1024 / 1e6),
    ]
    for label, by_target, scale in extra:
        values = {}
        for target in columns:
            med = median(by_target.get(target, []))
            values[target] = None if med is None else med * scale
        cells = [label, *(fmt(values[t]) for t in columns)]
        cells.append("-")
        cells += [fmt(ratio(values["proxy"], values[r]), "x") for r in refs]
        rows.append(cells)
    return markdown_table(header, rows)


def _goal(name: str, limit: str, measured: str, ok: bool | None) -> dict[str, Any]:
    return {"target": name, "limit": limit, "measured": measured, "ok": ok}


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 5 with its measured value; ok is None when it was not measured."""
    s = result["summary"]

    def v(case: str, target: str, metric: str) -> float | None:
        return _value(s, case, target, metric)

    def at_least(x: float | None, limit: float) -> bool | None:
        return None if x is None else x >= limit

    def at_most(x: float | None, limit: float) -> bool | None:
        return None if x is None else x <= limit

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    out = []
    for ref, limit in (("bare", 1.0), ("litellm", 60.0), ("nginx", 0.12)):
        r = ratio(v("plain_c16", "proxy", "rps"), v("plain_c16", ref, "rps"))
        out.append(
            _goal(f"non-stream c=16 throughput vs {ref}", f">= {limit:g}x", fmt(r, "x"),
                  at_least(r, limit))
        )  # fmt: skip
    for metric, limit in (("p50_ms", 0.3), ("p99_ms", 1.0)):
        added = diff(v("plain_c1", "proxy", metric), v("plain_c1", "direct", metric))
        label = metric.split("_")[0]
        out.append(
            _goal(f"added latency c=1 {label}", f"<= {limit:g} ms", fmt(added, "ms"),
                  at_most(added, limit))
        )  # fmt: skip
    events = v("stream_nodelay_c64", "proxy", "events_per_s")
    out.append(_goal("re-chunked events/s, no delay", ">= 150,000", fmt(events),
                     at_least(events, 150_000)))  # fmt: skip
    r = ratio(events, v("stream_nodelay_c64", "bare", "events_per_s"))
    out.append(_goal("events/s vs bare", ">= 0.7x", fmt(r, "x"), at_least(r, 0.7)))
    added = diff(v("stream_paced_c16", "proxy", "ttfb_p50_ms"),
                 v("stream_paced_c16", "direct", "ttfb_p50_ms"))  # fmt: skip
    bare_added = diff(v("stream_paced_c16", "bare", "ttfb_p50_ms"),
                      v("stream_paced_c16", "direct", "ttfb_p50_ms"))  # fmt: skip
    measured = fmt(added, "ms") + (f" (bare adds {fmt(bare_added, 'ms')})" if bare_added else "")
    out.append(_goal("TTFB added p50, 10 ms pacing, c=16", "<= 1 ms", measured,
                     at_most(added, 1.0)))  # fmt: skip
    rss = _mb(v("open_streams_1000", "proxy", "rss_peak_kib"))
    out.append(_goal("RSS with 1,000 open streams", "<= 150 MB", fmt(rss, "MB"),
                     at_most(rss, 150)))  # fmt: skip
    idle = _mb(median(result["idle_rss_kib"].get("proxy", [])))
    out.append(_goal("idle RSS", "<= 45 MB", fmt(idle, "MB"), at_most(idle, 45)))
    startup = median(result["startup_s"].get("proxy", []))
    out.append(_goal("ready after start", "<= 0.5 s", fmt(startup, "s"), at_most(startup, 0.5)))
    errors = sum(_errors(s, case, "proxy") for case in s)
    out.append(_goal("requests that failed through the proxy", "0", str(errors), errors == 0))
    return out


def _share(value: float | None) -> str:
    return "?" if value is None else f"{value:.0%}"


def render(result: dict[str, Any]) -> str:
    meta = result["meta"]
    m = meta["machine"]
    ceiling = result["ceiling"]
    lines = [
        f"# llmproxy benchmark, {meta['date']}",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, "
        f"Python {m['python']}, commit {m['commit']}",
        f"- {meta['pinning']}",
        f"- other load: CPU {_share(meta.get('cpu_busy_start'))} busy just before the run and "
        f"{_share(meta.get('cpu_busy_end'))} just after; load average (1 min) "
        f"{meta['load_average_start'][0]:.2f} at start, {meta['load_average_end'][0]:.2f} at end",
        f"- {meta['reps']} repetition(s) of {meta['duration_s']:g} s per case, medians; "
        f"proxy log level {meta['proxy_log_level']}" + (" (quick run)" if meta["quick"] else ""),
        f"- fast upstream alone, load from the other core: {fmt(ceiling['rps'])} req/s, "
        f"{fmt(ceiling['events_per_s'])} events/s",
    ]
    for name, why in meta["references_failed"].items():
        lines.append(f"- {name}: not measured: {why}")
    lines += ["", table(result), "", "## Targets (issue 5)", ""]
    rows = []
    for goal in result["goals"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[goal["ok"]]
        rows.append([goal["target"], goal["limit"], goal["measured"], verdict])
    lines.append(markdown_table(["target", "limit", "measured", "result"], rows))
    if not meta["compare"]:
        lines += ["", "Targets against references need `make bench-compare`."]
    return "\n".join(lines)
