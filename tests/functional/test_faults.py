"""The fault suite: one case per upstream fault, asserting what the client got and what the
upstream saw (how many attempts, with which keys, how far apart). SPEC §3-§6."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.downstream import SSEResponse
from tests.fakes.upstream import (
    FakeUpstream,
    Hang,
    Reply,
    Reset,
    Stream,
    UpstreamFactory,
    chat_stream_events,
)
from tests.functional.scrape import Scrape
from tests.harness import ProxyFactory, ProxyHarness, chat, document, provider, read_sse


def err(code: str | None = None, message: str = "upstream says no") -> dict[str, Any]:
    return {"error": {"message": message, "type": "x", "param": None, "code": code}}


def cut_events(model: str = "gpt-test") -> list[object]:
    """A stream's first chunks, without a finish reason."""
    return chat_stream_events(model, ["Hel", "lo"], finish_reason=None)[:3]


@dataclass
class Fault:
    """One row of the fault table: what the primary does, what the client and upstreams see."""

    name: str
    primary: list[Any]  # behaviours for the primary provider's first key, in order
    stream: bool = False
    status: int = 200
    served_by: str | None = "backup"  # x-proxy-provider, when answered
    primary_asks: int = 1  # requests the primary provider receives
    keys: list[str] = field(default_factory=lambda: ["k1"])
    second_key: list[Any] | None = None  # behaviours for "k2" if keys has it
    expect_in_body: bytes | None = None
    done: bool | None = None  # for streams: whether [DONE] ends the client stream


FAULTS = [
    Fault(
        "429 with Retry-After -> next key",
        [Reply(429, json=err("rate_limit_exceeded"), headers={"Retry-After": "30"})],
        keys=["k1", "k2"],
        second_key=[Reply()],
        served_by="primary",
        primary_asks=2,
    ),
    Fault(
        "429 without Retry-After, single key -> next provider",
        [Reply(429, json=err("rate_limit_exceeded"))],
    ),
    Fault(
        "429 quota exhausted -> next provider",
        [Reply(429, json=err("insufficient_quota", "You exceeded your current quota"))],
    ),
    Fault(
        "401 -> next key",
        [Reply(401, json=err("invalid_api_key"))],
        keys=["k1", "k2"],
        second_key=[Reply()],
        served_by="primary",
        primary_asks=2,
    ),
    Fault("402 -> next provider", [Reply(402, json=err("payment_required"))]),
    Fault("403 -> next provider", [Reply(403, json=err("forbidden"))]),
    Fault("404 -> next provider", [Reply(404, json=err("model_not_found"))]),
    Fault(
        "400 -> returned as is",
        [Reply(400, json=err("invalid_value", "bad temperature"))],
        status=400,
        served_by=None,
        expect_in_body=b"bad temperature",
    ),
    Fault(
        "422 content filter -> returned as is",
        [Reply(422, json=err("content_filter", "filtered"))],
        status=422,
        served_by=None,
    ),
    Fault(
        "500 once -> same provider again",
        [Reply(500, json=err()), Reply()],
        served_by="primary",
        primary_asks=2,
    ),
    Fault(
        "503 persistent -> retried once, then next provider",
        [Reply(503, json=err()), Reply(503, json=err())],
        primary_asks=2,
    ),
    Fault(
        "reset before headers -> once more, then next provider", [Reset(), Reset()], primary_asks=2
    ),
    Fault("no answer at all -> next provider, never asked twice", [Hang()]),
    Fault(
        "slow first token -> next provider",
        [Stream(first_delay=3.0)],
        stream=True,
        done=True,
    ),
    Fault(
        "HTML with status 200 -> next provider",
        [Reply(200, body=b"<html>maintenance</html>", headers={"Content-Type": "text/html"})],
    ),
    Fault(
        "HTML with status 200 on a stream -> next provider",
        [Reply(200, body=b"<html>maintenance</html>", headers={"Content-Type": "text/html"})],
        stream=True,
        done=True,
    ),
    Fault(
        "error event before the first data -> next provider",
        [Stream(events=[err("server_error")], done=False)],
        stream=True,
        done=True,
    ),
    Fault(
        "stream cut after the first data -> error event, no [DONE]",
        [Stream(events=cut_events(), done=False, end="reset")],
        stream=True,
        served_by="primary",
        done=False,
        expect_in_body=b"stream_reset",
    ),
    Fault(
        "stream stalls after the first data -> error event, no [DONE]",
        [Stream(events=cut_events(), done=False, end="hang")],
        stream=True,
        served_by="primary",
        done=False,
        expect_in_body=b"stream_idle_timeout",
    ),
    Fault(
        "stream ends cleanly without a finish reason -> error event, no [DONE]",
        [Stream(events=cut_events(), done=False)],
        stream=True,
        served_by="primary",
        done=False,
        expect_in_body=b"stream_truncated",
    ),
    Fault(
        "error event after the first data -> error event, no [DONE]",
        [Stream(events=[*cut_events(), err("server_error")], done=False)],
        stream=True,
        served_by="primary",
        done=False,
        expect_in_body=b"stream_error_event",
    ),
    Fault(
        "malformed event mid-stream -> dropped, the rest relayed",
        [
            Stream(
                events=[
                    *cut_events(),
                    b"data: {not json\n\n",
                    *chat_stream_events("gpt-test", ["!"])[2:],
                ]
            )
        ],
        stream=True,
        served_by="primary",
        done=True,
    ),
    Fault(
        "finished stream without [DONE] -> [DONE] added",
        [Stream(done=False)],
        stream=True,
        served_by="primary",
        done=True,
    ),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
async def test_fault(
    fault: Fault, upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    primary = await upstream_factory("primary")
    backup = await upstream_factory("backup")
    primary.script_key("k1", *fault.primary)
    if fault.second_key is not None:
        primary.script_key("k2", *fault.second_key)
    proxy = await make_proxy(
        document(
            {
                "primary": provider(primary.base_url, tier=1, keys=fault.keys),
                "backup": provider(backup.base_url, tier=2, keys=["b1"]),
            },
            defaults={
                "rotation": "sequential",
                "timeouts": {"connect": 1, "first_byte": 1, "idle": 0.5, "total": 10},
            },
        )
    )
    async with proxy.post("/v1/chat/completions", chat(stream=fault.stream)) as r:
        assert r.status == fault.status
        assert r.headers.get("x-proxy-provider") == fault.served_by
        raw = await r.read()
    if fault.expect_in_body is not None:
        assert fault.expect_in_body in raw
    if fault.done is not None:
        data = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
        assert (data[-1] == b"[DONE]") is fault.done
        assert data.count(b"[DONE]") == (1 if fault.done else 0)
        for payload in data:
            if payload != b"[DONE]":
                orjson.loads(payload)  # nothing malformed reaches the client
        if not fault.done:
            assert "error" in orjson.loads(data[-1])
    assert len(primary.seen) == fault.primary_asks
    assert len(backup.seen) == (1 if fault.served_by == "backup" else 0)
    assert "k1" not in raw.decode(errors="replace").split('"')  # never a key in the answer
    gaps = [b.at - a.at for a, b in zip(primary.seen, primary.seen[1:], strict=False)]
    if fault.primary_asks == 2 and fault.keys == ["k1"]:
        assert gaps[0] >= 0.2  # the transient retry waits its jittered pause


async def test_rate_limited_key_is_not_asked_again_inside_its_cooldown(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.script_key("k1", Reply(429, json=err(), headers={"Retry-After": "30"}))
    proxy = await make_proxy(
        document({"p": provider(upstream.base_url, keys=["k1", "k2"], rotation="sequential")})
    )
    for _ in range(5):
        async with proxy.post("/v1/chat/completions", chat()) as r:
            assert r.status == 200
    assert [s.key for s in upstream.seen] == ["k1", "k2", "k2", "k2", "k2", "k2"]


async def test_rate_limit_is_per_key_and_model(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.script_key("k1", Reply(429, json=err(), headers={"Retry-After": "30"}))
    proxy = await make_proxy(
        document({"p": provider(upstream.base_url, keys=["k1"], models=["m-a", "m-b"])})
    )
    async with proxy.post("/v1/chat/completions", chat("m-a")) as r:
        assert r.status == 429
    async with proxy.post("/v1/chat/completions", chat("m-b")) as r:
        assert r.status == 200  # the same key still serves another model
    async with proxy.post("/v1/chat/completions", chat("m-a")) as r:
        assert r.status == 429
    assert [s.model for s in upstream.seen] == ["m-a", "m-b"]


async def test_backoff_without_retry_after_doubles_and_resets_on_success(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    limited = Reply(429, json=err())
    upstream.script_key("k1", limited, limited, Reply(), limited)
    proxy = await make_proxy(
        document(
            {"p": provider(upstream.base_url, keys=["k1"])},
            defaults={"cooldown": {"initial": 0.2, "max": 10, "auth": 60}},
        )
    )
    pool = proxy.server.gateway.pool

    async def ask() -> int:
        async with proxy.post("/v1/chat/completions", chat()) as r:
            return r.status

    assert await ask() == 429
    first = pool.key_views(time.monotonic())[0].cooldown_remaining
    await asyncio.sleep(0.25)
    assert await ask() == 429
    second = pool.key_views(time.monotonic())[0].cooldown_remaining
    assert 0.1 < first <= 0.2 < second <= 0.4  # doubled
    await asyncio.sleep(0.45)
    assert await ask() == 200  # success resets the count
    assert await ask() == 429
    third = pool.key_views(time.monotonic())[0].cooldown_remaining
    assert third <= 0.2
    asks = upstream.seen
    for earlier, later, cooldown in ((asks[0], asks[1], 0.2), (asks[1], asks[2], 0.4)):
        assert later.at - earlier.at >= cooldown  # never asked inside its cooldown


async def test_http_date_retry_after_is_honoured(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    upstream.script_key("k1", Reply(429, json=err(), headers={"Retry-After": when}))
    proxy = await make_proxy(document({"p": provider(upstream.base_url, keys=["k1"])}))
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 429
        assert 100 <= int(r.headers["Retry-After"]) <= 121
    remaining = proxy.server.gateway.pool.key_views(time.monotonic())[0].cooldown_remaining
    assert 100 <= remaining <= 121


async def test_quota_exhaustion_cools_for_cooldown_max(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.script_key("k1", Reply(429, json=err("insufficient_quota", "quota exceeded")))
    proxy = await make_proxy(document({"p": provider(upstream.base_url, keys=["k1"])}))
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 429
    view = proxy.server.gateway.pool.key_views(time.monotonic())[0]
    assert view.state == "cooling"
    assert view.cooldown_remaining > 250  # cooldown.max is 300, not the 1 s backoff


async def test_remaining_zero_cools_the_key_before_any_429(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.script_key(
        "k1",
        Reply(headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"}),
    )
    proxy = await make_proxy(
        document({"p": provider(upstream.base_url, keys=["k1", "k2"], rotation="sequential")})
    )
    for _ in range(3):
        async with proxy.post("/v1/chat/completions", chat()) as r:
            assert r.status == 200
    assert [s.key for s in upstream.seen] == ["k1", "k2", "k2"]


async def test_auth_failure_disables_the_key(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.script_key("k1", Reply(401, json=err("invalid_api_key")))
    proxy = await make_proxy(
        document({"p": provider(upstream.base_url, keys=["k1", "k2"], rotation="sequential")})
    )
    for _ in range(3):
        async with proxy.post("/v1/chat/completions", chat()) as r:
            assert r.status == 200
    assert [s.key for s in upstream.seen] == ["k1", "k2", "k2", "k2"]
    views = {v.key: v for v in proxy.server.gateway.pool.key_views(time.monotonic())}
    assert views["#1"].state == "disabled" and views["#1"].cooldown_remaining > 3000


async def test_404_costs_the_key_nothing(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    a = await upstream_factory("a")
    b = await upstream_factory("b")
    a.script(Reply(404, json=err("model_not_found")))
    proxy = await make_proxy(
        document({"a": provider(a.base_url, keys=["k1"]), "b": provider(b.base_url, tier=2)})
    )
    for provider_name in ("b", "a"):
        async with proxy.post("/v1/chat/completions", chat()) as r:
            assert r.headers["x-proxy-provider"] == provider_name
    assert [s.key for s in a.seen] == ["k1", "k1"]


@pytest.mark.parametrize(
    ("retry_header", "served_by", "premium_asks"),
    [
        ({"retry-after-ms": "300"}, "premium", 2),  # within max_wait: wait, ask the same key again
        ({"Retry-After": "10"}, "cheap", 1),  # beyond max_wait: drop to the next tier
    ],
)
async def test_waits_for_a_cooldown_only_within_max_wait(
    upstream_factory: UpstreamFactory,
    make_proxy: ProxyFactory,
    retry_header: dict[str, str],
    served_by: str,
    premium_asks: int,
) -> None:
    premium = await upstream_factory("premium")
    cheap = await upstream_factory("cheap")
    premium.script(Reply(429, json=err(), headers=retry_header))
    proxy = await make_proxy(
        document(
            {
                "premium": provider(premium.base_url, keys=["k1"]),
                "cheap": provider(cheap.base_url, tier=2),
            },
            defaults={"max_wait": 2},
        )
    )
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 200
        assert r.headers["x-proxy-provider"] == served_by
    assert len(premium.seen) == premium_asks
    assert len(cheap.seen) == (1 if served_by == "cheap" else 0)
    if premium_asks == 2:
        # Asked again only once the cooldown was over.
        assert premium.seen[1].at - premium.seen[0].at >= 0.3


async def test_concurrency_cap_is_never_exceeded(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.default = Reply(delay=1.5)  # long enough that all four overlap, even on a busy CI
    proxy = await make_proxy(
        document(
            {"p": provider(upstream.base_url, keys=["k1", "k2"])},
            defaults={"max_concurrent_per_key": 1},
        )
    )

    async def ask() -> int:
        async with proxy.post("/v1/chat/completions", chat()) as r:
            return r.status

    statuses = await asyncio.gather(*(ask() for _ in range(4)))
    assert sorted(statuses) == [200, 200, 429, 429]  # two slots; the rest told to retry
    assert sorted(s.key or "" for s in upstream.seen) == ["k1", "k2"]


async def test_total_deadline_bounds_the_request(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    slow = [await upstream_factory(f"s{i}") for i in range(3)]
    for fake in slow:
        fake.default = Hang()
    proxy = await make_proxy(
        document(
            {f"s{i}": provider(f.base_url, tier=i + 1) for i, f in enumerate(slow)},
            defaults={"timeouts": {"connect": 1, "first_byte": 0.4, "idle": 1, "total": 0.6}},
        )
    )
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 504
    assert len(slow[2].seen) == 0  # the budget ran out before the third provider


async def test_keepalive_comments_while_waiting_then_failover(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    silent = await upstream_factory("silent")
    backup = await upstream_factory("backup")
    silent.default = Stream(first_delay=5)
    proxy = await make_proxy(
        document(
            {"silent": provider(silent.base_url), "backup": provider(backup.base_url, tier=2)},
            defaults={"timeouts": {"connect": 1, "first_byte": 0.8, "idle": 1, "total": 10}},
            sse_keepalive_seconds=0.2,
        )
    )
    async with proxy.post("/v1/chat/completions", chat(stream=True)) as r:
        assert r.status == 200
        raw = await r.read()
    assert raw.startswith(b": keepalive\n\n")
    data = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    text = "".join(
        orjson.loads(d)["choices"][0]["delta"].get("content", "")
        for d in data[:-1]
        if orjson.loads(d)["choices"]
    )
    assert text == "Hello from backup"
    assert data[-1] == b"[DONE]"


async def test_every_upstream_failing_after_keepalives_is_counted_with_its_failure_status(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.default = Stream(first_delay=5)
    proxy = await make_proxy(
        document(
            {"silent": provider(upstream.base_url)},
            defaults={"timeouts": {"connect": 1, "first_byte": 0.5, "idle": 1, "total": 10}},
            sse_keepalive_seconds=0.1,
        )
    )
    async with proxy.post("/v1/chat/completions", chat(stream=True)) as r:
        assert r.status == 200  # the keepalives sent the headers
        raw = await r.read()
    assert raw.startswith(b": keepalive\n\n")
    data = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert orjson.loads(data[-1])["error"]["code"] == "upstream_timeout"
    scrape = Scrape(await proxy.metrics_text())
    counted = {
        s.labels["status"]: s.value for s in scrape.samples("llmproxy_requests_total") if s.value
    }
    assert counted == {"504": 1.0}


async def test_linger_after_finish_is_bounded(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.script(Stream(done=False, end="hang"))
    proxy = await make_proxy(
        document(
            {"p": provider(upstream.base_url)},
            defaults={"timeouts": {"connect": 1, "first_byte": 5, "idle": 30, "total": 60}},
        )
    )
    started = time.monotonic()
    async with proxy.post("/v1/chat/completions", chat(stream=True)) as r:
        data = await read_sse(r)
    assert data[-1] == b"[DONE]"
    assert time.monotonic() - started < 10  # not the 30 s idle timeout


# -- continuation ---------------------------------------------------------------------


async def prefill_pair(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> tuple[FakeUpstream, FakeUpstream, ProxyHarness]:
    """`first` in tier 1, and `resumer` in tier 2 able to continue its cut streams."""
    first = await upstream_factory("first")
    resumer = await upstream_factory("resumer")
    proxy = await make_proxy(
        document(
            {
                "first": provider(first.base_url),
                "resumer": provider(resumer.base_url, tier=2, continuation="prefill"),
            }
        )
    )
    return first, resumer, proxy


async def test_cut_stream_is_continued_by_a_prefill_provider(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    first, resumer, proxy = await prefill_pair(upstream_factory, make_proxy)
    first.script(Stream(events=cut_events("m"), done=False, end="reset"))
    resumer.script(Stream(events=chat_stream_events("m", [" world"]), done=True))
    async with proxy.post("/v1/chat/completions", chat("m", stream=True)) as r:
        data = await read_sse(r)
    assert data[-1] == b"[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}  # one stream id throughout
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello world"
    sent = resumer.seen[0].json["messages"]
    assert sent[-1] == {"role": "assistant", "content": "Hello"}
    assert sent[:-1] == chat("m")["messages"]
    text_metrics = await proxy.metrics_text()
    series = 'from_provider="first",result="ok",to_provider="resumer"'
    assert f"llmproxy_stream_continuations_total{{{series}}} 1.0" in text_metrics


async def test_a_continuation_s_token_usage_is_counted_for_its_provider(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    first, resumer, proxy = await prefill_pair(upstream_factory, make_proxy)
    first.script(Stream(events=cut_events("m"), done=False, end="reset"))
    resumer.script(
        Stream(events=chat_stream_events("m", [" world"], include_usage=True, prompt_tokens=9))
    )
    body = chat("m", stream=True, stream_options={"include_usage": True})
    async with proxy.post("/v1/chat/completions", body) as r:
        data = await read_sse(r)
    assert data[-1] == b"[DONE]"
    scrape = Scrape(await proxy.metrics_text())
    tokens = "llmproxy_tokens_total"
    assert scrape.value(tokens, tier="2", provider="resumer", kind="prompt") == 9
    assert scrape.value(tokens, tier="2", provider="resumer", kind="completion") == 1
    (key,) = [v for v in proxy.server.gateway.pool.key_views(0) if v.provider == "resumer"]
    assert (key.prompt_tokens, key.completion_tokens) == (9, 1)


async def test_a_continuation_after_half_an_emoji_sends_it_as_a_valid_escape(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    # The cut stream's text ends in a lone surrogate (`\ud83d`, the first half of 😀):
    # the prefill carries it on as the same escape, and the continuation goes on from there.
    first, resumer, proxy = await prefill_pair(upstream_factory, make_proxy)
    half = (
        b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":'
        b'[{"index":0,"delta":{"content":"Hi \\ud83d"},"finish_reason":null}]}\n\n'
    )
    first.script(Stream(events=[half], done=False, end="reset"))
    resumer.script(Stream(events=chat_stream_events("m", [" there"])))
    async with proxy.post("/v1/chat/completions", chat("m", stream=True)) as r:
        data = await read_sse(r)
    assert data[-1] == b"[DONE]"
    assert b'"Hi \\ud83d"' in resumer.seen[0].body
    sent = json.loads(resumer.seen[0].body)  # orjson, like the fake, refuses a lone surrogate
    assert sent["messages"][-1] == {"role": "assistant", "content": "Hi \ud83d"}


async def test_a_request_too_deep_to_send_again_is_not_continued_and_frees_the_key(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    # Forwarded as it came, but too deeply nested for the prefill request to be written.
    first, resumer, proxy = await prefill_pair(upstream_factory, make_proxy)
    first.script(Stream(events=cut_events("m"), done=False, end="reset"))
    deep = b"[" * 1000 + b"]" * 1000
    body = orjson.dumps(chat("m", stream=True))[:-1] + b',"metadata_blob":' + deep + b"}"
    async with proxy.post(
        "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 200
        data = await read_sse(r)
    assert orjson.loads(data[-1])["error"]["code"] == "stream_reset"
    assert not resumer.seen
    assert all(v.in_flight == 0 for v in proxy.server.gateway.pool.key_views(time.monotonic()))


async def test_refused_continuation_reports_the_original_failure(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    first, resumer, proxy = await prefill_pair(upstream_factory, make_proxy)
    first.script(Stream(events=cut_events("m"), done=False, end="reset"))
    resumer.script(Reply(400, json=err("invalid_request", "prefill not supported")))
    async with proxy.post("/v1/chat/completions", chat("m", stream=True)) as r:
        data = await read_sse(r)
    last = orjson.loads(data[-1])
    assert last["error"]["code"] == "stream_reset"
    assert "prefill" not in last["error"]["message"]
    assert b"[DONE]" not in data


async def test_no_continuation_for_a_tool_call_in_flight(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    first, resumer, proxy = await prefill_pair(upstream_factory, make_proxy)
    tool_chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [
            {
                "index": 0,
                "delta": {
                    "content": "x",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{"},
                        }
                    ],
                },
                "finish_reason": None,
            }
        ],
    }
    first.script(Stream(events=[tool_chunk], done=False, end="reset"))
    async with proxy.post("/v1/chat/completions", chat("m", stream=True)) as r:
        data = await read_sse(r)
    assert "error" in orjson.loads(data[-1])
    assert not resumer.seen


# -- breaker and fail-back ------------------------------------------------------------


async def test_flapping_tier_one_fails_over_probes_one_at_a_time_and_fails_back(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    tier1 = await upstream_factory("tier1")
    tier2 = await upstream_factory("tier2")
    tier1.default = Reply(500, json=err("server_error"))
    proxy = await make_proxy(
        document(
            {"tier1": provider(tier1.base_url), "tier2": provider(tier2.base_url, tier=2)},
            defaults={"breaker": {"failures": 2, "open_seconds": 1.0}},
        )
    )

    async def ask() -> str:
        async with proxy.post("/v1/chat/completions", chat()) as r:
            assert r.status == 200
            return r.headers["x-proxy-provider"]

    # Outage: one request's two failures open the breaker; tier 2 serves.
    assert await ask() == "tier2"
    asked_during_outage = len(tier1.seen)
    assert asked_during_outage == 2
    results = await asyncio.gather(*(ask() for _ in range(10)))
    assert set(results) == {"tier2"}
    assert len(tier1.seen) == asked_during_outage  # open: tier 1 not asked at all

    # Half-open while still down: concurrent requests let exactly one probe through.
    await asyncio.sleep(1.05)
    tier1.default = Reply(500, json=err("server_error"), delay=0.2)
    results = await asyncio.gather(*(ask() for _ in range(5)))
    assert set(results) == {"tier2"}
    assert len(tier1.seen) == asked_during_outage + 1

    # Recovery: after the next open period the probe succeeds and traffic returns.
    tier1.default = None
    await asyncio.sleep(1.05)
    assert await ask() == "tier1"
    results = await asyncio.gather(*(ask() for _ in range(5)))
    assert set(results) == {"tier1"}


async def test_persistent_429_never_hammers_the_upstream(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.default = Reply(429, json=err())
    proxy = await make_proxy(
        document(
            {"p": provider(upstream.base_url, keys=["k1", "k2", "k3"])},
            defaults={"max_wait": 0, "cooldown": {"initial": 5, "max": 60, "auth": 60}},
        )
    )
    for _ in range(30):
        async with proxy.post("/v1/chat/completions", chat()) as r:
            assert r.status == 429
    # Each key asked once; afterwards every key is cooling and no request reaches the upstream.
    assert len(upstream.seen) == 3


async def test_client_leaving_mid_stream_cancels_the_upstream_and_frees_the_key(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.script(Stream(delay=0.2))  # a slow stream the client abandons after one event
    proxy = await make_proxy(document({"p": provider(upstream.base_url, keys=["k1"])}))
    async with proxy.post("/v1/chat/completions", chat(stream=True)) as r:
        first = await r.content.readline()
        assert first.startswith(b"data: ")
        r.close()
    assert await upstream.wait_disconnected(0)
    pool = proxy.server.gateway.pool
    for _ in range(100):
        if pool.key_views(time.monotonic())[0].in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert pool.key_views(time.monotonic())[0].in_flight == 0
    text = await proxy.metrics_text()
    assert 'llmproxy_client_disconnects_total{route="chat_completions"} 1.0' in text


async def test_a_write_to_a_closing_client_counts_as_a_disconnect_not_a_server_error(
    upstream: FakeUpstream,
    make_proxy: ProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The client closed while events were in flight: aiohttp refuses the next write
    # ("Cannot write to closing transport") before it has cancelled the handler.
    writes = 0
    real_write = SSEResponse.write

    async def write_until_the_client_is_gone(self: SSEResponse, data: bytes) -> None:
        nonlocal writes
        writes += 1
        if writes > 1:
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        await real_write(self, data)

    monkeypatch.setattr(SSEResponse, "write", write_until_the_client_is_gone)
    upstream.script(Stream(delay=0.05))
    proxy = await make_proxy(document({"p": provider(upstream.base_url)}))
    async with proxy.post("/v1/chat/completions", chat(stream=True)) as r:
        await r.read()
    scrape = Scrape(await proxy.metrics_text())
    counted = {
        s.labels["status"]: s.value for s in scrape.samples("llmproxy_requests_total") if s.value
    }
    assert counted == {"499": 1.0}
    assert scrape.value("llmproxy_client_disconnects_total", route="chat_completions") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_other_api_streams_relay_done_only_when_sent(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.script(Stream(events=[{"a": 1}], done=True), Stream(events=[{"a": 2}], done=False))
    proxy = await make_proxy(document({"p": provider(upstream.base_url)}))
    body = {"model": "gpt-test", "stream": True}
    async with proxy.post("/v1/custom/stream", body) as r:
        assert await read_sse(r) == [b'{"a":1}', b"[DONE]"]
    async with proxy.post("/v1/custom/stream", body) as r:
        assert await read_sse(r) == [b'{"a":2}']


async def test_an_oversized_event_mid_stream_ends_it_with_an_error_event(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    huge = b"data: " + b"x" * (17 * 1024 * 1024)  # past the decoder's 16 MiB limit, no newline
    upstream.script(Stream(events=[*cut_events(), huge], done=False))
    proxy = await make_proxy(document({"p": provider(upstream.base_url)}))
    async with proxy.post("/v1/chat/completions", chat(stream=True)) as r:
        assert r.status == 200
        data = await read_sse(r)
    assert orjson.loads(data[-1])["error"]["code"] == "stream_reset"
    assert b"[DONE]" not in data
