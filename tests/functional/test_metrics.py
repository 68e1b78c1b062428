"""`/metrics` (SPEC §9): the exact families, their values after scripted traffic, bounded labels,
series at zero from the start, OpenMetrics negotiation, and counters that survive a reload."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from proxy.config import load_settings
from proxy.lifecycle import Lifecycle
from proxy.metrics import LATENCY_BUCKETS
from tests.fakes.upstream import Hang, Reply, Stream, UpstreamFactory, chat_stream_events
from tests.functional.scrape import Scrape
from tests.harness import AUTH, ProxyFactory, chat, document, provider, read_sse, scenario_document

# SPEC §9, verbatim: family name (as the parser names it) -> (type, label names).
SPEC_FAMILIES: dict[str, tuple[str, frozenset[str]]] = {
    "llmproxy_requests": ("counter", frozenset({"route", "model", "status"})),
    "llmproxy_request_duration_seconds": ("histogram", frozenset({"route", "tier"})),
    "llmproxy_upstream_attempts": ("counter", frozenset({"tier", "provider", "outcome"})),
    "llmproxy_upstream_ttfb_seconds": ("histogram", frozenset({"tier", "provider"})),
    "llmproxy_fallbacks": ("counter", frozenset({"from_tier", "to_tier", "reason"})),
    "llmproxy_tokens": ("counter", frozenset({"tier", "provider", "kind"})),
    "llmproxy_inflight_requests": ("gauge", frozenset()),
    "llmproxy_keys": ("gauge", frozenset({"provider", "state"})),
    "llmproxy_key_cooldown_seconds": ("gauge", frozenset({"provider", "key"})),
    "llmproxy_breaker_open": ("gauge", frozenset({"provider"})),
    "llmproxy_stream_interruptions": ("counter", frozenset({"tier", "provider", "reason"})),
    "llmproxy_stream_continuations": (
        "counter",
        frozenset({"from_provider", "to_provider", "result"}),
    ),
    "llmproxy_stream_malformed_events": ("counter", frozenset({"tier", "provider"})),
    "llmproxy_client_disconnects": ("counter", frozenset({"route"})),
    "llmproxy_config_reloads": ("counter", frozenset({"result"})),
}
ROUTES = {"chat_completions", "completions", "embeddings", "responses", "models", "other"}
OUTCOMES = {
    "ok",
    "context_length",
    "client_error",
    "auth_error",
    "forbidden",
    "not_found",
    "rate_limited",
    "server_error",
    "connect_error",
    "timeout",
    "bad_response",
}
CHAT = "chat_completions"


def err(code: str) -> dict[str, Any]:
    return {"error": {"message": "no", "type": "x", "param": None, "code": code}}


async def scrape(proxy: Any) -> Scrape:
    return Scrape(await proxy.metrics_text())


async def wait_for_value(proxy: Any, name: str, want: float, **labels: str) -> Scrape:
    """Scrape until the sample has the value: the server finishes a cancelled request after
    the client has already gone, so its accounting lands a moment later (bounded wait)."""
    for _ in range(200):
        result = await scrape(proxy)
        if result.value(name, **labels) == want:
            return result
        await asyncio.sleep(0.01)
    return result


async def test_exposes_exactly_the_spec_families_types_and_labels(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    a = await upstream_factory("a")
    doc = document({"a": provider(a.base_url, keys=["k1"]), "b": provider(a.base_url, tier=2)})
    proxy = await make_proxy(doc)
    async with proxy.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200

    families = (await scrape(proxy)).families
    assert set(families) == set(SPEC_FAMILIES)  # no `_created` gauges or anything else
    for name, (kind, labels) in SPEC_FAMILIES.items():
        found_kind, samples = families[name]
        assert found_kind == kind, name
        assert samples, f"{name} has no series"
        for sample in samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)


async def test_histogram_buckets_span_5ms_to_10min(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    a = await upstream_factory("a")
    proxy = await make_proxy(document({"a": provider(a.base_url)}))
    result = await scrape(proxy)
    for name in (
        "llmproxy_upstream_ttfb_seconds_bucket",
        "llmproxy_request_duration_seconds_bucket",
    ):
        bounds = {float(s.labels["le"]) for s in result.samples(name)}
        assert min(bounds) == 0.005 and max(b for b in bounds if b != float("inf")) == 600
        assert bounds == {*LATENCY_BUCKETS, float("inf")}


async def test_label_sets_from_config_exist_at_zero_from_the_start(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    a = await upstream_factory("a")
    doc = document(
        {
            "a": provider(a.base_url, keys=["k1", "k2"], models=["gpt-test"]),
            "b": provider(a.base_url, tier=2, models=["gpt-test", "small"]),
            "c": provider(a.base_url, tier=3, models=["*"], continuation="prefill"),
        }
    )
    proxy = await make_proxy(doc)
    result = await scrape(proxy)

    for tier, name in (("1", "a"), ("2", "b"), ("3", "c")):
        for outcome in OUTCOMES:
            assert (
                result.value(
                    "llmproxy_upstream_attempts_total", tier=tier, provider=name, outcome=outcome
                )
                == 0
            )
        for kind in ("prompt", "completion"):
            assert result.value("llmproxy_tokens_total", tier=tier, provider=name, kind=kind) == 0
        assert result.value("llmproxy_upstream_ttfb_seconds_count", tier=tier, provider=name) == 0
        assert result.value("llmproxy_breaker_open", provider=name) == 0
    for from_tier, to_tier in (("1", "2"), ("1", "3"), ("2", "3")):
        for reason in OUTCOMES - {"ok", "client_error"}:
            assert (
                result.value(
                    "llmproxy_fallbacks_total", from_tier=from_tier, to_tier=to_tier, reason=reason
                )
                == 0
            )
    assert result.label_values("llmproxy_fallbacks_total", "from_tier") == {"1", "2"}
    for model in ("gpt-test", "small", "other"):
        assert result.value("llmproxy_requests_total", route=CHAT, model=model, status="200") == 0
    assert result.value("llmproxy_request_duration_seconds_count", route=CHAT, tier="1") == 0
    for route in ROUTES:
        assert result.value("llmproxy_client_disconnects_total", route=route) == 0
    for outcome in ("ok", "error"):
        assert result.value("llmproxy_config_reloads_total", result=outcome) == 0
    # c takes a prefill: a and b can continue on it; and "none" when nobody can.
    assert (
        result.value(
            "llmproxy_stream_continuations_total", from_provider="a", to_provider="c", result="ok"
        )
        == 0
    )
    assert (
        result.value(
            "llmproxy_stream_continuations_total",
            from_provider="c",
            to_provider="none",
            result="unavailable",
        )
        == 0
    )
    assert result.value("llmproxy_keys", provider="a", state="ready") == 2
    assert result.value("llmproxy_keys", provider="a", state="cooling") == 0
    assert result.value("llmproxy_key_cooldown_seconds", provider="a", key="#2") == 0
    assert result.value("llmproxy_inflight_requests") == 0


async def test_values_after_failover_stream_429_interruption_and_disconnect(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    a, b = await upstream_factory("a"), await upstream_factory("b")
    limited, cut, slow = (
        await upstream_factory("limited"),
        await upstream_factory("cut"),
        await upstream_factory("slow"),
    )
    doc = scenario_document(a.base_url, b.base_url, limited.base_url, cut.base_url, slow.base_url)
    proxy = await make_proxy(doc)
    assert proxy.session is not None

    # 1. Tier 1 rate-limits its only key: tier 2 answers (a fallback for rate_limited).
    a.script(Reply(429, json=err("rate_limit_exceeded"), headers={"Retry-After": "30"}))
    async with proxy.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200 and response.headers["x-proxy-tier"] == "2"
        await response.read()
    # 2. A stream while a's key cools: tier 1 is skipped (another rate_limited fallback).
    body = chat(stream=True, stream_options={"include_usage": True})
    async with proxy.post("/v1/chat/completions", json=body) as response:
        assert response.status == 200 and response.headers["x-proxy-provider"] == "b"
        events = await read_sse(response)
        assert events[-1] == b"[DONE]"
    # 3. The only candidate rate-limits: the client gets the 429.
    limited.script(Reply(429, json=err("rate_limit_exceeded"), headers={"Retry-After": "30"}))
    async with proxy.post("/v1/chat/completions", json=chat("gpt-limited")) as response:
        assert response.status == 429
    # 4. A stream cut after its first event, with an invalid event on the way.
    first = chat_stream_events("gpt-cut", ["Hel", "lo"], finish_reason=None)[:2]
    cut.script(Stream(events=[*first, b"data: {not json\n\n"], done=False, end="reset"))
    async with proxy.post("/v1/chat/completions", json=chat("gpt-cut", stream=True)) as response:
        events = await read_sse(response)
        assert b"[DONE]" not in events
    # 5. A client that gives up while the upstream is silent.
    slow.script(Hang())
    gone = asyncio.create_task(_post_and_read(proxy.session, proxy.url, chat("gpt-slow")))
    assert await slow.wait_seen(1)
    during = await scrape(proxy)
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    assert await slow.wait_disconnected(0)
    result = await wait_for_value(
        proxy, "llmproxy_requests_total", 1, route=CHAT, model="gpt-slow", status="499"
    )

    assert during.value("llmproxy_inflight_requests") == 1
    assert result.value("llmproxy_inflight_requests") == 0
    attempts = "llmproxy_upstream_attempts_total"
    assert result.value(attempts, tier="1", provider="a", outcome="rate_limited") == 1
    assert result.value(attempts, tier="1", provider="a", outcome="ok") == 0
    assert result.value(attempts, tier="2", provider="b", outcome="ok") == 2
    assert result.value(attempts, tier="1", provider="limited", outcome="rate_limited") == 1
    assert result.value(attempts, tier="1", provider="cut", outcome="ok") == 1
    assert result.total(attempts) == 5  # the abandoned attempt never got an outcome
    fallbacks = "llmproxy_fallbacks_total"
    assert result.value(fallbacks, from_tier="1", to_tier="2", reason="rate_limited") == 2
    assert result.total(fallbacks) == 2
    requests = "llmproxy_requests_total"
    assert result.value(requests, route=CHAT, model="gpt-test", status="200") == 2
    assert result.value(requests, route=CHAT, model="gpt-limited", status="429") == 1
    assert result.value(requests, route=CHAT, model="gpt-cut", status="200") == 1
    assert result.total(requests) == 5
    # Only answering attempts measure a time to first byte.
    ttfb = "llmproxy_upstream_ttfb_seconds_count"
    assert result.value(ttfb, tier="2", provider="b") == 2
    assert result.value(ttfb, tier="1", provider="a") == 0
    assert result.value(ttfb, tier="1", provider="cut") == 1
    duration = "llmproxy_request_duration_seconds_count"
    assert result.value(duration, route=CHAT, tier="2") == 2
    assert result.value(duration, route=CHAT, tier="1") == 1  # the cut stream was answered
    assert result.value(duration, route=CHAT, tier="none") == 2  # the 429 and the 499
    # The fake counts words: "user Say hello" in, "Hello from b" out; the stream's usage too.
    assert result.value("llmproxy_tokens_total", tier="2", provider="b", kind="prompt") == 6
    assert result.value("llmproxy_tokens_total", tier="2", provider="b", kind="completion") == 6
    interruptions = "llmproxy_stream_interruptions_total"
    assert result.value(interruptions, tier="1", provider="cut", reason="reset") == 1
    assert result.total(interruptions) == 1
    assert result.value("llmproxy_stream_malformed_events_total", tier="1", provider="cut") == 1
    assert (
        result.value(
            "llmproxy_stream_continuations_total",
            from_provider="cut",
            to_provider="none",
            result="unavailable",
        )
        == 1
    )
    assert result.value("llmproxy_client_disconnects_total", route=CHAT) == 1
    # Key state is read at scrape time: both rate-limited keys cool for about 30 s.
    assert result.value("llmproxy_keys", provider="a", state="cooling") == 1
    assert result.value("llmproxy_keys", provider="a", state="ready") == 0
    assert result.value("llmproxy_keys", provider="b", state="ready") == 1
    for name, key in (("a", "key-a"), ("limited", "key-l")):
        left = result.value("llmproxy_key_cooldown_seconds", provider=name, key="#1")
        assert left is not None and 20 < left <= 30, (name, key)
    assert "key-a" not in result.text and "key-l" not in result.text


async def _post_and_read(session: aiohttp.ClientSession, url: str, body: Any) -> bytes:
    async with session.post(url + "/v1/chat/completions", json=body, headers=AUTH) as response:
        return await response.read()


async def test_breaker_open_gauge_follows_the_breaker(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    a, b = await upstream_factory("a"), await upstream_factory("b")
    doc = document(
        {
            "a": provider(a.base_url, breaker={"failures": 1, "open_seconds": 30}),
            "b": provider(b.base_url, tier=2),
        }
    )
    proxy = await make_proxy(doc)
    a.default = Reply(500, json=err("server_error"))
    async with proxy.post("/v1/chat/completions", json=chat()) as response:
        assert response.headers["x-proxy-provider"] == "b"
    result = await scrape(proxy)
    assert result.value("llmproxy_breaker_open", provider="a") == 1
    assert result.value("llmproxy_breaker_open", provider="b") == 0
    assert (
        result.value("llmproxy_fallbacks_total", from_tier="1", to_tier="2", reason="server_error")
        == 1
    )


async def test_requests_rejected_before_routing_are_counted(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    a = await upstream_factory("a")
    proxy = await make_proxy(
        document({"a": provider(a.base_url, models=["gpt-test"])}, max_body_bytes=1024)
    )
    assert proxy.session is not None
    session, url = proxy.session, proxy.url
    cases = [
        (session.post(url + "/v1/chat/completions", json=chat()), 401),  # no proxy key
        (proxy.post("/v1/embeddings", data=b"{not json"), 400),
        (proxy.post("/v1/chat/completions", json={"messages": []}), 400),  # no model
        (proxy.post("/v1/completions", json=chat(pad="x" * 2000)), 413),
        (proxy.get("/v1/chat/completions"), 405),
        (proxy.get("/v1/nowhere"), 404),
        (proxy.post("/v1/audio/speech", json={"input": "x"}), 400),  # routed API, no model
        (proxy.get("/v1/models"), 200),
        (proxy.get("/v1/models/unknown"), 404),
        (session.get(url + "/v1/models"), 401),
        (proxy.get("/v1/proxy/status"), 200),
        # Probes and scrapes are not client traffic: never counted.
        (proxy.get("/healthz"), 200),
        (proxy.get("/readyz"), 200),
        (session.get(url + "/metrics"), 200),
    ]
    for request, status in cases:
        async with request as response:
            assert response.status == status
            await response.read()

    result = await scrape(proxy)
    requests = "llmproxy_requests_total"
    expected = {
        (CHAT, "401"): 1,
        ("embeddings", "400"): 1,
        (CHAT, "400"): 1,
        ("completions", "413"): 1,
        (CHAT, "405"): 1,
        ("other", "404"): 1,
        ("other", "400"): 1,
        ("models", "200"): 1,
        ("models", "404"): 1,
        ("models", "401"): 1,
        ("other", "200"): 1,
    }
    for (route, status), count in expected.items():
        assert result.value(requests, route=route, model="other", status=status) == count
    assert result.total(requests) == len(cases) - 3
    assert result.value("llmproxy_request_duration_seconds_count", route=CHAT, tier="none") == 3


async def test_client_model_strings_never_create_label_values(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    a = await upstream_factory("a")
    doc = document(
        {
            "exact": provider(a.base_url, models=["gpt-test"]),
            "catchall": provider(a.base_url, tier=2, models=["*"]),
        }
    )
    proxy = await make_proxy(doc)
    before = await scrape(proxy)
    names = [f"client-{secrets.token_hex(6)}" for _ in range(100)]

    async def ask(model: str) -> int:
        async with proxy.post("/v1/chat/completions", json=chat(model)) as response:
            await response.read()
            return response.status

    statuses = await asyncio.gather(*(ask(m) for m in names))
    assert set(statuses) == {200}  # served by the catch-all tier, under their own names

    after = await scrape(proxy)
    assert after.label_values("llmproxy_requests_total", "model") == {"gpt-test", "other"}
    assert after.label_values("llmproxy_requests_total", "model") == before.label_values(
        "llmproxy_requests_total", "model"
    )
    assert after.value("llmproxy_requests_total", route=CHAT, model="other", status="200") == 100
    assert not any(name in after.text for name in names)
    assert len(after.text.splitlines()) == len(before.text.splitlines())


async def test_openmetrics_when_the_scraper_asks(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    a = await upstream_factory("a")
    proxy = await make_proxy(document({"a": provider(a.base_url)}))
    assert proxy.session is not None
    # What Prometheus itself sends.
    accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    async with proxy.session.get(proxy.url + "/metrics", headers={"Accept": accept}) as response:
        assert response.content_type == "application/openmetrics-text"
        text = await response.text()
    assert text.endswith("# EOF\n")
    assert "# TYPE llmproxy_requests counter" in text
    assert "_created" not in text
    async with proxy.session.get(proxy.url + "/metrics") as response:
        assert response.content_type == "text/plain"
        assert "# TYPE llmproxy_requests_total counter" in await response.text()


# -- reload -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(lifecycle: Lifecycle) -> AsyncIterator[str]:
    """The lifecycle's server on a free port, without its signal handlers and watcher."""
    await lifecycle.server.start()
    runner = web.ServerRunner(lifecycle.server.web_server(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
        await lifecycle.server.close()


async def test_counters_survive_a_reload_and_new_providers_start_at_zero(
    tmp_path: Path, upstream_factory: UpstreamFactory
) -> None:
    a = await upstream_factory("a")
    config = tmp_path / "providers.yaml"
    doc = document({"a": provider(a.base_url, models=["gpt-test"])})
    config.write_text(yaml.safe_dump(doc))
    lifecycle = Lifecycle(load_settings(str(config)), str(config))
    async with serving(lifecycle) as url, aiohttp.ClientSession(headers=AUTH) as session:

        async def ask(model: str) -> None:
            async with session.post(url + "/v1/chat/completions", json=chat(model)) as response:
                assert response.status == 200

        async def metrics() -> Scrape:
            async with session.get(url + "/metrics") as response:
                return Scrape(await response.text())

        await ask("gpt-test")
        doc["providers"]["b"] = provider(a.base_url, tier=2, models=["gpt-new"])
        config.write_text(yaml.safe_dump(doc))
        await lifecycle.reload("test")
        await ask("gpt-test")
        await ask("gpt-new")
        config.write_text("providers: [")  # invalid: the old table stays, the error is counted
        await lifecycle.reload("test")
        result = await metrics()

    requests = "llmproxy_requests_total"
    assert result.value(requests, route=CHAT, model="gpt-test", status="200") == 2
    assert result.value(requests, route=CHAT, model="gpt-new", status="200") == 1
    assert (
        result.value("llmproxy_upstream_attempts_total", tier="1", provider="a", outcome="ok") == 2
    )
    assert (
        result.value("llmproxy_upstream_attempts_total", tier="2", provider="b", outcome="timeout")
        == 0
    )
    assert result.value("llmproxy_keys", provider="b", state="ready") == 1
    assert result.value("llmproxy_config_reloads_total", result="ok") == 1
    assert result.value("llmproxy_config_reloads_total", result="error") == 1


async def test_negative_upstream_usage_is_not_counted_and_breaks_nothing(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    a = await upstream_factory("a")
    proxy = await make_proxy(document({"a": provider(a.base_url)}))
    usage = {"prompt_tokens": -5, "completion_tokens": 2, "total_tokens": -3}
    a.script(Reply(json={"id": "x", "object": "chat.completion", "choices": [], "usage": usage}))
    async with proxy.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
    result = await scrape(proxy)
    assert result.value("llmproxy_tokens_total", tier="1", provider="a", kind="prompt") == 0
    assert result.value("llmproxy_tokens_total", tier="1", provider="a", kind="completion") == 2


async def test_client_leaving_while_uploading_counts_as_a_disconnect(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    a = await upstream_factory("a")
    proxy = await make_proxy(document({"a": provider(a.base_url)}))
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + AUTH["Authorization"].split()[1].encode()
        + b'\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model": '
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # let the server start reading the body before the client leaves
    writer.close()
    await writer.wait_closed()
    result = await wait_for_value(
        proxy, "llmproxy_requests_total", 1, route="embeddings", model="other", status="499"
    )
    assert (
        result.value("llmproxy_requests_total", route="embeddings", model="other", status="499")
        == 1
    )
    assert result.value("llmproxy_client_disconnects_total", route="embeddings") == 1
    assert a.seen == []
