"""The benchmark's pure helpers: percentiles, wrk parsing, summaries, targets, fake answers.

The benchmark itself never runs in `make test`; these check what it computes from its raw
numbers, so a wrong table cannot come from a wrong helper.
"""

from __future__ import annotations

import math

import orjson
import pytest

from tests.bench import report
from tests.bench.fastupstream import Answers, _dechunk, stream_events
from tests.bench.profile import top_functions
from tests.bench.stats import (
    StreamSample,
    fmt,
    markdown_table,
    median,
    parse_wrk,
    percentile,
    ratio,
    summarise_streams,
    vm_kib,
)

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:1/v1/chat/completions
  1 threads and 16 connections
BENCH_JSON {"requests":50000,"duration_us":5000000,"bytes":1,"errors":{"connect":0,"read":0,\
"write":0,"status":2,"timeout":1},"latency_us":{"p50":250.0,"p90":400.0,"p99":1200.0,\
"mean":300.0,"max":9000.0}}
"""


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5, 1, 3], 50) == 3
    assert percentile([1, 2, 3, 4, 5], 100) == 5
    assert percentile([1, 2, 3, 4, 5], 0) == 1
    assert percentile([7], 99) == 7
    assert math.isnan(percentile([], 50))


def test_median_skips_missing_values() -> None:
    assert median([3.0, None, 1.0, math.nan, 2.0]) == 2.0
    assert median([None]) is None


def test_ratio_of_missing_or_zero_is_none() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None


def test_parse_wrk_reads_the_done_line() -> None:
    parsed = parse_wrk(WRK_OUTPUT)
    assert parsed["rps"] == 10_000
    assert parsed["p50_ms"] == 0.25
    assert parsed["p99_ms"] == 1.2
    assert parsed["errors"] == 3
    assert parsed["error_kinds"] == {"status": 2, "timeout": 1}


def test_parse_wrk_without_the_line_raises() -> None:
    with pytest.raises(ValueError, match="BENCH_JSON"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


def test_summarise_streams_counts_wrong_event_counts_as_errors() -> None:
    samples = [
        StreamSample(ok=True, ttfb=0.001, total=0.5, events=50),
        StreamSample(ok=True, ttfb=0.003, total=0.7, events=50),
        StreamSample(ok=True, ttfb=0.002, total=0.6, events=49),
        StreamSample(ok=False, error="status 502"),
    ]
    summary = summarise_streams(samples, elapsed=2.0, expect=50)
    assert summary["streams"] == 2
    assert summary["errors"] == 2
    assert summary["error_kinds"] == {"49 events, expected 50": 1, "status 502": 1}
    assert summary["events_per_s"] == 50
    assert summary["ttfb_p50_ms"] == pytest.approx(2.0)
    assert summary["total_p50_ms"] == pytest.approx(600.0)


def test_fmt_and_table() -> None:
    assert fmt(None) == "-"
    assert fmt(123456.7) == "123,457"
    assert fmt(0.3456, "ms") == "0.346 ms"
    assert fmt(1.234, "x") == "1.23x"
    table = markdown_table(["a", "bb"], [["1", "2"]])
    assert table.splitlines() == ["| a | bb |", "| - | -- |", "| 1 | 2  |"]


def test_vm_kib_reads_proc_status() -> None:
    status = "Name:\tpython\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n"
    assert vm_kib(status, "VmRSS") == 40960
    assert vm_kib(status, "VmHWM") == 51200
    assert vm_kib(status, "VmSwap") is None


def _result(**proxy: float) -> dict[str, object]:
    summary = {
        "plain_c1": {
            "direct": {"p50_ms": 0.05, "p99_ms": 0.1},
            "proxy": {"p50_ms": proxy.get("p50", 0.3), "p99_ms": 0.9, "errors": 0.0},
        },
        "plain_c16": {"proxy": {"rps": 8000.0}, "bare": {"rps": 7000.0}},
    }
    return {
        "summary": summary,
        "idle_rss_kib": {"proxy": [40000]},
        "startup_s": {"proxy": [0.3, 0.6, 0.4]},
        "peak_rss_kib": {},
    }


def test_goals_compare_against_limits() -> None:
    goals = {g["target"]: g for g in report.goals(_result())}
    assert goals["non-stream c=16 throughput vs bare"]["ok"] is True
    assert goals["non-stream c=16 throughput vs nginx"]["ok"] is None  # not measured
    assert goals["added latency c=1 p50"]["ok"] is True  # 0.25 ms added
    assert goals["ready after start"]["measured"] == "0.400 s"
    missed = {g["target"]: g for g in report.goals(_result(p50=0.5))}
    assert missed["added latency c=1 p50"]["ok"] is False


def test_fake_stream_ends_with_finish_and_done() -> None:
    frames = stream_events(5)
    assert len(frames) == 6
    assert frames[-1] == b"data: [DONE]\n\n"
    last = orjson.loads(frames[-2][len(b"data: ") :])
    assert last["choices"][0]["finish_reason"] == "stop"
    chunks = Answers().stream_chunks(5)
    assert chunks[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert chunks[-1].endswith(b"0\r\n\r\n")


def test_dechunk_waits_for_the_whole_body() -> None:
    body = bytearray(b"xx4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\nrest")
    assert _dechunk(body, 2) == (b"abcdefg", len(body) - 4)
    assert _dechunk(bytearray(b"4\r\nabcd\r\n"), 0) is None


def test_top_functions_counts_own_and_inclusive_samples() -> None:
    collapsed = "main;a;b 3\nmain;a 1\n"
    text = top_functions(collapsed)
    assert "4 samples" in text
    assert " 75.0%  b" in text
    assert "100.0%  a" in text
