"""Pure helpers of the benchmark: percentiles, parsing wrk's output, summaries, the table.

No I/O and no clock here, so `tests/bench/test_stats.py` checks them in milliseconds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

WRK_MARKER = "BENCH_JSON "


@dataclass(slots=True)
class StreamSample:
    """One stream as the SSE client saw it (times in seconds)."""

    ok: bool
    ttfb: float = 0.0
    total: float = 0.0
    events: int = 0
    error: str = ""


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation between closest ranks; nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None (or nan); None when there are none."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(kept) if kept else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def parse_wrk(output: str) -> dict[str, Any]:
    """The summary the Lua `done()` printed, with req/s and latencies in ms added.

    Raises ValueError when the line is missing (wrk failed before finishing).
    """
    for line in output.splitlines():
        if line.startswith(WRK_MARKER):
            data: dict[str, Any] = orjson.loads(line[len(WRK_MARKER) :])
            break
    else:
        raise ValueError(f"no {WRK_MARKER.strip()} line in wrk output: {output[-500:]!r}")
    seconds = data["duration_us"] / 1e6
    errors = data["errors"]
    latency = data["latency_us"]
    return {
        "requests": data["requests"],
        "rps": data["requests"] / seconds if seconds > 0 else 0.0,
        "errors": sum(errors.values()),
        "error_kinds": {k: v for k, v in errors.items() if v},
        "p50_ms": latency["p50"] / 1000,
        "p90_ms": latency["p90"] / 1000,
        "p99_ms": latency["p99"] / 1000,
        "mean_ms": latency["mean"] / 1000,
    }


def summarise_streams(
    samples: Sequence[StreamSample], elapsed: float, expect: int = 0
) -> dict[str, Any]:
    """What one SSE client run measured; a stream with the wrong event count is an error."""
    good = [s for s in samples if s.ok and (expect == 0 or s.events == expect)]
    errors: dict[str, int] = {}
    for sample in samples:
        if sample in good:
            continue
        reason = sample.error or f"{sample.events} events, expected {expect}"
        errors[reason] = errors.get(reason, 0) + 1
    events = sum(s.events for s in good)
    ttfb = [s.ttfb * 1000 for s in good]
    total = [s.total * 1000 for s in good]
    return {
        "streams": len(good),
        "errors": len(samples) - len(good),
        "error_kinds": errors,
        "elapsed_s": elapsed,
        "events": events,
        "events_per_s": events / elapsed if elapsed > 0 else 0.0,
        "streams_per_s": len(good) / elapsed if elapsed > 0 else 0.0,
        "ttfb_p50_ms": percentile(ttfb, 50),
        "ttfb_p99_ms": percentile(ttfb, 99),
        "total_p50_ms": percentile(total, 50),
        "total_p99_ms": percentile(total, 99),
    }


def fmt(value: float | None, unit: str = "") -> str:
    """A number for the table: 3 significant figures, thousands separated; `-` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    magnitude = abs(value)
    if magnitude >= 1000:
        text = f"{value:,.0f}"
    elif magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".rstrip()


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table, columns padded so it also reads well in a terminal."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def vm_kib(status_text: str, field: str) -> int | None:
    """A `VmRSS:`/`VmHWM:` value in KiB from the text of /proc/<pid>/status."""
    for line in status_text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None
