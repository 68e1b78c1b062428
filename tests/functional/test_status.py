"""`GET /v1/proxy/status`, and a scan of every operator-facing output for key values."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

from proxy.requestlog import JsonFormatter, TextFormatter
from tests.fakes.upstream import Hang, Reply, Stream, UpstreamFactory
from tests.harness import AUTH, PROXY_KEY, ProxyFactory, chat, document, provider


def err(code: str, message: str = "no") -> dict[str, Any]:
    return {"error": {"message": message, "type": "x", "param": None, "code": code}}


async def status_of(proxy: Any) -> dict[str, Any]:
    async with proxy.get("/v1/proxy/status") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        document: dict[str, Any] = await response.json()
        return document


def providers_of(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p | {"tier": t["tier"]} for t in document["tiers"] for p in t["providers"]}


async def test_status_needs_a_proxy_key(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    a = await upstream_factory("a")
    proxy = await make_proxy(document({"a": provider(a.base_url)}))
    assert proxy.session is not None
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
        async with proxy.session.get(proxy.url + "/v1/proxy/status", headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "invalid_api_key"
    for path in ("/v1/proxy/status", "/proxy/status"):
        async with proxy.session.get(proxy.url + path, headers={"x-api-key": PROXY_KEY}) as r:
            assert r.status == 200
    async with proxy.post("/v1/proxy/status", json={}) as response:
        assert response.status == 405


async def test_status_shows_tiers_providers_breakers_and_keys_by_name(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    a, broken, local = (
        await upstream_factory("a"),
        await upstream_factory("broken"),
        await upstream_factory("local"),
    )
    doc = document(
        {
            "a": provider(
                a.base_url,
                keys=[{"value": "ka-1", "name": "team-a"}, {"value": "ka-2", "name": "team-b"}],
                models=["gpt-test"],
            ),
            "groq": provider(a.base_url, tier=2, keys_from_env="GROQ_API_KEY"),
            "broken": {
                "tier": 2,
                "models": ["gpt-broken"],
                "breaker": {"failures": 1, "open_seconds": 30},
                "endpoints": [
                    {"base_url": "${EU_BASE:-}", "models": ["eu-*"]},
                    {"base_url": broken.base_url},
                ],
            },
            "local": provider(local.base_url, tier=3, models=["gpt-hang"]),
        }
    )
    proxy = await make_proxy(doc)
    assert proxy.session is not None

    # team-a is rate-limited, team-b answers; the breaker of `broken` opens; one request hangs.
    a.script_key("ka-1", Reply(429, json=err("rate_limit_exceeded"), headers={"Retry-After": "30"}))
    async with proxy.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200 and response.headers["x-proxy-attempts"] == "2"
    broken.default = Reply(500, json=err("server_error"))
    async with proxy.post("/v1/chat/completions", json=chat("gpt-broken")) as response:
        assert response.status == 502
    local.script(Hang())
    hanging = asyncio.create_task(post(proxy, chat("gpt-hang")))
    assert await local.wait_seen(1)
    document_ = await status_of(proxy)
    hanging.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await hanging

    assert document_["ready"] is True and document_["draining"] is False
    assert document_["inflight_requests"] == 1
    assert [t["tier"] for t in document_["tiers"]] == [1, 2, 3]
    assert [p["name"] for p in document_["tiers"][1]["providers"]] == ["groq", "broken"]
    providers = providers_of(document_)

    first = providers["a"]
    assert first["enabled"] is True and first["keyless"] is False and "reason" not in first
    assert first["keys_by_state"] == {"ready": 1, "cooling": 1, "disabled": 0}
    keys = {k["name"]: k for k in first["keys"]}
    assert list(keys) == ["team-a", "team-b"]
    assert keys["team-a"]["state"] == "cooling"
    assert 20 < keys["team-a"]["cooldown_remaining_seconds"] <= 30
    assert keys["team-a"]["consecutive_failures"] == 1
    assert keys["team-b"] | {"name": None} == {
        "name": None,
        "state": "ready",
        "cooldown_remaining_seconds": 0.0,
        "in_flight": 0,
        "consecutive_failures": 0,
        "requests": 1,
        "prompt_tokens": 3,
        "completion_tokens": 3,
    }
    assert first["endpoints"] == [
        {
            "base_url": a.base_url,
            "enabled": True,
            "breaker": "closed",
            "breaker_open_remaining_seconds": 0.0,
        }
    ]

    groq = providers["groq"]
    assert groq["enabled"] is False and groq["tier"] == 2
    assert "GROQ_API_KEY" in groq["reason"] and groq["keys"] == []
    assert "keyless" not in groq  # it has no key because none is set, not by design

    endpoints = providers["broken"]["endpoints"]
    assert endpoints[0]["enabled"] is False and "EU_BASE" in endpoints[0]["reason"]
    assert endpoints[0]["base_url"] is None and "breaker" not in endpoints[0]
    assert endpoints[1]["breaker"] == "open"
    assert 20 < endpoints[1]["breaker_open_remaining_seconds"] <= 30
    assert providers["broken"]["keyless"] is True

    local_keys = providers["local"]["keys"]
    assert [(k["name"], k["in_flight"], k["requests"]) for k in local_keys] == [("keyless", 1, 1)]

    proxy.server.draining = True
    for _ in range(200):  # the server notices the client left a moment later
        drained = await status_of(proxy)
        if providers_of(drained)["local"]["keys"][0]["in_flight"] == 0:
            break
        await asyncio.sleep(0.01)
    assert drained["ready"] is False and drained["draining"] is True
    assert providers_of(drained)["local"]["keys"][0]["in_flight"] == 0
    assert drained["inflight_requests"] == 0


async def post(proxy: Any, body: Any) -> bytes:
    async with proxy.post("/v1/chat/completions", json=body) as response:
        data: bytes = await response.read()
        return data


# -- no key value anywhere ------------------------------------------------------------------

ALPHA, BETA, ENV_KEY, SELF = (
    "sk-SECRET-alpha-0001",
    "sk-SECRET-beta-0002",
    "gsk-SECRET-env-0003",
    "sk-SECRET-self-0004",
)
SECRETS = (ALPHA, BETA, ENV_KEY, SELF)


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


async def test_no_key_value_in_responses_metrics_status_or_logs(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory, all_logs: pytest.LogCaptureFixture
) -> None:
    one, two, three = (
        await upstream_factory("one"),
        await upstream_factory("two"),
        await upstream_factory("three"),
    )
    doc = document(
        {
            # The last key is named after its own value: a mistake the outputs must survive.
            "one": provider(one.base_url, keys=[ALPHA, BETA, {"value": SELF, "name": SELF}]),
            "two": provider(two.base_url, tier=2, keys_from_env="TWO_API_KEY"),
            "three": provider(three.base_url, tier=3),
        }
    )
    proxy = await make_proxy(doc, {"TWO_API_KEY_1": ENV_KEY})
    assert proxy.session is not None
    # Upstreams that echo the key back, as some do: tier 1 fails with every key (401, 500
    # twice, 429), tier 2 refuses the content (a 400 relayed to the client as it is).
    one.default = Reply(500, json=err("server_error", f"{BETA} broke"))
    one.script_key(ALPHA, Reply(401, json=err("invalid_api_key", f"Incorrect API key {ALPHA}")))
    one.script_key(
        SELF,
        Reply(429, json=err("rate_limit_exceeded", f"{SELF} slow"), headers={"Retry-After": "30"}),
    )
    two.script_key(ENV_KEY, Reply(400, json=err("content_filter", f"{ENV_KEY} refused")))
    # A stream that breaks with an error event quoting a key.
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
    }
    three.script(Stream(events=[chunk, err("server_error", f"{ALPHA} revoked")], done=False))

    seen: list[str] = []

    async def collect(response: Any) -> None:
        seen.append(repr(dict(response.headers)))
        seen.append((await response.read()).decode(errors="replace"))

    async with proxy.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 400  # the client error of tier 2, relayed as it is
        await collect(response)
    async with proxy.post("/v1/chat/completions", json=chat("three/x", stream=True)) as response:
        assert response.status == 200
        await collect(response)
    assert b"revoked" not in "".join(seen).encode() and "error_event" in seen[-1]
    for path, headers in (
        ("/metrics", {}),
        ("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}),
        ("/v1/proxy/status", AUTH),
        ("/v1/models", AUTH),
    ):
        async with proxy.session.get(proxy.url + path, headers=headers) as response:
            assert response.status == 200
            await collect(response)
    for formatter in (JsonFormatter(), TextFormatter()):
        seen.extend(formatter.format(record) for record in all_logs.records)

    # The run really used every key and met every failure, so the scan could have failed.
    assert {s.key for s in one.seen} == {ALPHA, BETA, SELF}
    assert [s.key for s in two.seen] == [ENV_KEY]
    assert len(three.seen) == 1
    assert len([r for r in all_logs.records if r.name == "proxy.access"]) == 4
    assert any("one:auth_error" in text and "one:rate_limited" in text for text in seen)
    everything = "\n".join(seen)
    for secret in SECRETS:
        assert secret not in everything, secret
        assert secret.split("-", 1)[1] not in everything, secret  # no fragment either
