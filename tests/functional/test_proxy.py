"""The proxy end to end over real sockets: routing, relaying, failover, errors (SPEC §3-§8)."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.fakes.upstream import FakeUpstream, Hang, Reply, Stream, UpstreamFactory
from tests.harness import (
    AUTH,
    PROXY_KEY,
    ProxyFactory,
    ProxyHarness,
    chat,
    document,
    provider,
    read_sse,
)


def error_of(body: bytes) -> dict[str, Any]:
    parsed = orjson.loads(body)
    assert set(parsed) == {"error"}
    assert set(parsed["error"]) == {"message", "type", "param", "code"}
    return parsed["error"]  # type: ignore[no-any-return]


# -- the happy paths ------------------------------------------------------------------


async def test_plain_request_is_relayed_with_routing_headers(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(
        document({"main": provider(upstream.base_url, keys=["sk-upstream-1"], models=["gpt-test"])})
    )
    async with proxy.post("/v1/chat/completions", chat(), headers={"x-request-id": "abc-1"}) as r:
        assert r.status == 200
        body = await r.json()
        assert r.headers["x-request-id"] == "abc-1"
        assert r.headers["x-proxy-provider"] == "main"
        assert r.headers["x-proxy-tier"] == "1"
        assert r.headers["x-proxy-attempts"] == "1"
    assert body["choices"][0]["message"]["content"] == "Hello from fake"
    assert body["model"] == "gpt-test"
    seen = upstream.seen[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.key == "sk-upstream-1"
    assert PROXY_KEY not in str(seen.headers)


async def test_request_id_is_generated_when_absent(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert len(r.headers["x-request-id"]) >= 16
    async with proxy.get("/healthz") as r:
        assert r.headers["x-request-id"]


async def test_body_is_forwarded_raw_when_the_model_is_unchanged(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    raw = b'{"model": "gpt-test",   "messages": [{"role":"user","content":"hi"}], "x_extra": 1}'
    async with proxy.post(
        "/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 200
    assert upstream.seen[0].body == raw


async def test_only_model_is_rewritten_for_a_mapped_name(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(
        document({"main": provider(upstream.base_url, models={"public-name": "upstream-name"})})
    )
    sent = chat("public-name", temperature=0.25, user="u-1")
    async with proxy.post("/v1/chat/completions", sent) as r:
        assert r.status == 200
    received = upstream.seen[0].json
    assert received["model"] == "upstream-name"
    assert {k: v for k, v in received.items() if k != "model"} == {
        k: v for k, v in sent.items() if k != "model"
    }


async def test_client_credentials_and_hop_by_hop_headers_are_not_forwarded(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url, keys=["sk-up"])}))
    headers = {
        "x-api-key": PROXY_KEY,
        "Cookie": "session=1",
        "Proxy-Authorization": "Basic eA==",
        "TE": "trailers",
        "OpenAI-Beta": "assistants=v2",
    }
    async with proxy.post("/v1/chat/completions", chat(), headers=headers) as r:
        assert r.status == 200
    seen = upstream.seen[0].headers
    assert seen["authorization"] == "Bearer sk-up"
    for name in ("x-api-key", "cookie", "proxy-authorization", "te"):
        assert name not in seen
    assert seen["openai-beta"] == "assistants=v2"
    assert PROXY_KEY not in orjson.dumps(seen).decode()


async def test_keyless_provider_sends_no_authorization(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(document({"local": provider(upstream.base_url)}))
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 200
    assert "authorization" not in upstream.seen[0].headers


async def test_custom_auth_header_and_extra_headers(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(
        document(
            {
                "azure": provider(
                    upstream.base_url,
                    keys=["az-key"],
                    auth_header="api-key",
                    headers={"x-extra": "1"},
                )
            }
        )
    )
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 200
    seen = upstream.seen[0].headers
    assert seen["api-key"] == "az-key"
    assert "authorization" not in seen
    assert seen["x-extra"] == "1"


async def test_paths_without_v1_prefix_are_accepted(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    async with proxy.post("/chat/completions", chat()) as r:
        assert r.status == 200
    async with proxy.post("/embeddings", {"model": "gpt-test", "input": "x"}) as r:
        assert r.status == 200
    assert [s.path for s in upstream.seen] == ["/v1/chat/completions", "/v1/embeddings"]


async def test_any_other_v1_post_with_a_model_is_routed(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    upstream.script(Reply(json={"ok": True}))
    async with proxy.post("/v1/audio/speech", {"model": "gpt-test", "input": "x"}) as r:
        assert r.status == 200
        assert await r.json() == {"ok": True}
    assert upstream.seen[0].path == "/v1/audio/speech"


async def test_provider_paths_restrict_what_it_serves(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    chat_only = await upstream_factory("chat-only")
    anything = await upstream_factory("anything")
    proxy = await make_proxy(
        document(
            {
                "chat-only": provider(chat_only.base_url, paths=["chat/completions"]),
                "anything": provider(anything.base_url, tier=2),
            }
        )
    )
    async with proxy.post("/v1/embeddings", {"model": "gpt-test", "input": "x"}) as r:
        assert r.headers["x-proxy-provider"] == "anything"
    assert not chat_only.seen


# -- streaming ------------------------------------------------------------------------


async def test_stream_is_rechunked_with_exactly_one_done(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    async with proxy.post("/v1/chat/completions", chat(stream=True)) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["x-proxy-provider"] == "main"
        assert r.headers["Cache-Control"] == "no-cache"
        first = await r.content.readline()
        assert first.startswith(b"data: {")  # no keepalive comment ahead of a prompt answer
        data = [first.strip()[6:], *await read_sse(r)]
    assert data[-1] == b"[DONE]"
    assert data.count(b"[DONE]") == 1
    chunks = [orjson.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello from fake"
    for raw in data[:-1]:
        assert raw == orjson.dumps(orjson.loads(raw))  # compact re-serialisation


async def test_stream_events_split_across_writes_crlf_and_comments(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    first = {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}
    second = {"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"}}]}
    last = {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    raw_first = b"data: " + orjson.dumps(first, option=orjson.OPT_INDENT_2).replace(
        b"\n", b"\r\ndata: "
    )
    upstream.script(
        Stream(
            events=[
                b": keepalive\r\n\r\n",
                raw_first[:7],
                raw_first[7:] + b"\r\n\r\ndata: " + orjson.dumps(second)[:5],
                orjson.dumps(second)[5:] + b"\n\ndata: " + orjson.dumps(last) + b"\n\n",
            ],
            done=True,
        )
    )
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    async with proxy.post("/v1/chat/completions", chat(stream=True)) as r:
        data = await read_sse(r)
    assert [orjson.loads(d) for d in data[:-1]] == [first, second, last]
    assert data[-1] == b"[DONE]"


async def test_done_is_added_when_upstream_ends_cleanly_without_it(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.script(Stream(done=False))
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    async with proxy.post("/v1/chat/completions", chat(stream=True)) as r:
        data = await read_sse(r)
    assert data[-1] == b"[DONE]"
    assert data.count(b"[DONE]") == 1


async def test_responses_stream_keeps_event_names_and_gets_no_done(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    body = {"model": "gpt-test", "input": "hi", "stream": True}
    async with proxy.post("/v1/responses", body) as r:
        raw = await r.read()
    assert b"[DONE]" not in raw
    assert b"event: response.created\n" in raw
    assert b"event: response.completed\n" in raw


async def test_stream_usage_is_relayed_when_asked(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    body = chat(stream=True, stream_options={"include_usage": True})
    async with proxy.post("/v1/chat/completions", body) as r:
        data = await read_sse(r)
    usage = [orjson.loads(d)["usage"] for d in data[:-1] if orjson.loads(d).get("usage")]
    assert usage and usage[-1]["completion_tokens"] > 0


# -- failover -------------------------------------------------------------------------


async def test_next_key_of_the_same_provider_after_a_rate_limit(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.script_key("k1", Reply(429, json={"error": {"message": "slow down"}}))
    proxy = await make_proxy(
        document({"main": provider(upstream.base_url, keys=["k1", "k2"])}, rotation="sequential")
        if False
        else document(
            {"main": provider(upstream.base_url, keys=["k1", "k2"], rotation="sequential")}
        )
    )
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 200
        assert r.headers["x-proxy-attempts"] == "2"
    assert [s.key for s in upstream.seen] == ["k1", "k2"]


async def test_next_provider_of_the_tier_then_next_tier(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    a = await upstream_factory("a")
    b = await upstream_factory("b")
    c = await upstream_factory("c")
    a.default = Reply(404, json={"error": {"message": "no such model"}})
    b.default = Reply(404, json={"error": {"message": "no such model"}})
    proxy = await make_proxy(
        document(
            {
                "a": provider(a.base_url, tier=1),
                "b": provider(b.base_url, tier=1),
                "c": provider(c.base_url, tier=2),
            },
            defaults={"rotation": "sequential"},
        )
    )
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 200
        assert r.headers["x-proxy-provider"] == "c"
        assert r.headers["x-proxy-tier"] == "2"
        assert r.headers["x-proxy-attempts"] == "3"
    assert (len(a.seen), len(b.seen), len(c.seen)) == (1, 1, 1)


async def test_pinned_provider_goes_first_and_never_climbs_a_tier(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    premium = await upstream_factory("premium")
    cheap = await upstream_factory("cheap")
    cheapest = await upstream_factory("cheapest")
    cheap.default = Reply(500, json={"error": {"message": "down"}})
    proxy = await make_proxy(
        document(
            {
                "premium": provider(premium.base_url, tier=1),
                "cheap": provider(cheap.base_url, tier=2, models={"m": "cheap-m"}),
                "cheapest": provider(cheapest.base_url, tier=3),
            }
        )
    )
    async with proxy.post("/v1/chat/completions", chat("cheap/m")) as r:
        assert r.status == 200
        assert r.headers["x-proxy-provider"] == "cheapest"
    assert not premium.seen
    assert [s.model for s in cheap.seen] == ["cheap-m", "cheap-m"]  # one transient retry
    assert cheapest.seen[0].model == "m"


async def test_pinned_provider_goes_first_in_a_balanced_tier(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    a = await upstream_factory("a")
    b = await upstream_factory("b")
    proxy = await make_proxy(
        document(
            {"a": provider(a.base_url, tier=1), "b": provider(b.base_url, tier=1)},
            defaults={"rotation": "balanced"},
        )
    )
    # Each answer makes b the most recently used provider of the tier: balancing alone
    # would put a first from the second request on.
    for _ in range(4):
        async with proxy.post("/v1/chat/completions", chat("b/m")) as r:
            assert r.status == 200
            assert r.headers["x-proxy-provider"] == "b"
    assert len(b.seen) == 4 and not a.seen
    # First is not only: when b fails, the rest of its tier still follows.
    b.script(Reply(404, json={"error": {"message": "no such model"}}))
    async with proxy.post("/v1/chat/completions", chat("b/m")) as r:
        assert r.status == 200
        assert r.headers["x-proxy-provider"] == "a"
        assert r.headers["x-proxy-attempts"] == "2"
    assert len(b.seen) == 5 and len(a.seen) == 1
    assert b.seen[-1].at < a.seen[0].at


async def test_pinned_provider_that_does_not_serve_the_model_is_404(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url, models=["only-this"])}))
    async with proxy.post("/v1/chat/completions", chat("main/other")) as r:
        assert r.status == 404
        assert error_of(await r.read())["code"] == "model_not_found"
    assert not upstream.seen


async def test_pinned_disabled_provider_is_answered_by_others_or_a_404_that_says_why(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    off = await upstream_factory("off")
    other = await upstream_factory("other")
    proxy = await make_proxy(
        document(
            {
                "off": provider(off.base_url, tier=1, models=["m", "only-off"], enabled=False),
                "other": provider(other.base_url, tier=2, models=["m"]),
            }
        )
    )
    async with proxy.post("/v1/chat/completions", chat("off/m")) as r:
        assert r.status == 200
        assert r.headers["x-proxy-provider"] == "other"
    async with proxy.post("/v1/chat/completions", chat("off/only-off")) as r:
        assert r.status == 404
        message = error_of(await r.read())["message"]
    assert "off" in message and "disabled" in message
    assert not off.seen


async def test_names_with_a_slash_that_is_not_a_provider_are_public_names(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(
        document({"main": provider(upstream.base_url, models=["meta-llama/llama-3"])})
    )
    async with proxy.post("/v1/chat/completions", chat("meta-llama/llama-3")) as r:
        assert r.status == 200
    assert upstream.seen[0].model == "meta-llama/llama-3"


async def test_unknown_model_is_404(upstream: FakeUpstream, make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url, models=["a"])}))
    async with proxy.post("/v1/chat/completions", chat("b")) as r:
        assert r.status == 404
        error = error_of(await r.read())
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"


async def test_client_error_is_returned_as_is_without_failover(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    a = await upstream_factory("a")
    b = await upstream_factory("b")
    filtered = {"error": {"message": "content filtered", "code": "content_filter"}}
    a.script(Reply(400, json=filtered))
    proxy = await make_proxy(
        document({"a": provider(a.base_url, tier=1), "b": provider(b.base_url, tier=2)})
    )
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 400
        assert await r.json() == filtered
    assert len(a.seen) == 1 and not b.seen


async def test_upstream_error_body_is_scrubbed_of_the_key(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.script(Reply(422, json={"error": {"message": "bad request for key sk-secret-99"}}))
    proxy = await make_proxy(document({"main": provider(upstream.base_url, keys=["sk-secret-99"])}))
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 422
        raw = await r.read()
    assert b"sk-secret-99" not in raw


@pytest.mark.parametrize("status", [200, 422])
async def test_credentials_in_provider_headers_and_keys_are_scrubbed_from_any_answer(
    upstream: FakeUpstream, make_proxy: ProxyFactory, status: int
) -> None:
    # An upstream that echoes the request headers back, as debug endpoints and some
    # gateways do: neither the key nor a credential in `headers:` may reach the client.
    echoed = {"echo": {"authorization": "Bearer sk-key-77", "x-extra-token": "tok-hdr-55"}}
    echoed |= {"version": "2023-06-01"}
    upstream.script(Reply(status, json={"id": "x", "choices": [], **echoed}))
    headers = {"x-extra-token": "tok-hdr-55", "anthropic-version": "2023-06-01"}
    proxy = await make_proxy(
        document({"main": provider(upstream.base_url, keys=["sk-key-77"], headers=headers)})
    )
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == status
        raw = await r.read()
    assert b"sk-key-77" not in raw and b"tok-hdr-55" not in raw
    assert b"2023-06-01" in raw  # a header that is no credential is left alone


async def test_context_length_goes_to_a_different_upstream_model(
    upstream_factory: UpstreamFactory, make_proxy: ProxyFactory
) -> None:
    small = await upstream_factory("small")
    same = await upstream_factory("same")
    large = await upstream_factory("large")
    too_long = {"error": {"message": "too long", "code": "context_length_exceeded"}}
    small.default = Reply(400, json=too_long)
    proxy = await make_proxy(
        document(
            {
                "small": provider(small.base_url, tier=1, models={"m": "m-8k"}),
                "same": provider(same.base_url, tier=1, models={"m": "m-8k"}),
                "large": provider(large.base_url, tier=2, models={"m": "m-128k"}),
            },
            defaults={"rotation": "sequential"},
        )
    )
    async with proxy.post("/v1/chat/completions", chat("m")) as r:
        assert r.status == 200
        assert r.headers["x-proxy-provider"] == "large"
    assert len(small.seen) == 1 and not same.seen
    assert large.seen[0].model == "m-128k"


async def test_context_length_with_no_other_model_returns_the_upstream_400(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    too_long = {"error": {"message": "too long", "code": "context_length_exceeded"}}
    upstream.default = Reply(400, json=too_long)
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 400
        assert await r.json() == too_long


async def test_all_rate_limited_is_429_with_retry_after_and_attempt_list(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.default = Reply(429, json={"error": {"message": "slow"}}, headers={"Retry-After": "7"})
    proxy = await make_proxy(
        document({"main": provider(upstream.base_url, keys=["k-aaa", "k-bbb"])})
    )
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 7
        raw = await r.read()
    error = error_of(raw)
    assert error["code"] == "rate_limit_exceeded"
    assert "main: rate_limited" in error["message"]
    assert b"k-aaa" not in raw and b"k-bbb" not in raw
    assert len(upstream.seen) == 2
    # Both keys are cooling now: the next request is answered without asking upstream.
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 429
        assert "Retry-After" in r.headers
    assert len(upstream.seen) == 2


@pytest.mark.parametrize(
    "hint",
    [
        {"Retry-After": "0"},
        {"retry-after-ms": "0"},
        {"Retry-After": email.utils.formatdate(time.time() - 60, usegmt=True)},
    ],
    ids=["retry-after-0", "retry-after-ms-0", "retry-after-past-date"],
)
async def test_a_zero_retry_after_is_no_tight_loop(
    hint: dict[str, str], upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.default = Reply(429, json={"error": {"message": "slow down"}}, headers=hint)
    proxy = await make_proxy(
        document(
            {"main": provider(upstream.base_url, keys=["only-key"])},
            defaults={"cooldown": {"initial": 0.1, "max": 10, "auth": 60}, "max_wait": 0.5},
        )
    )
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "1"
    # The key rests its backoff (0.1, 0.2, 0.4 s) and the proxy waits for it, until the
    # next rest (0.8 s) is longer than max_wait: four asks, not max_attempts in a burst.
    asks = [s.at for s in upstream.seen]
    assert len(asks) == 4
    for earlier, later, rest in zip(asks[:-1], asks[1:], (0.1, 0.2, 0.4), strict=True):
        assert later - earlier >= rest
    # Still resting: the next request does not reach the upstream.
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 429
    assert len(upstream.seen) == 4


OPENAI_QUOTA = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
GROQ_TPM = {
    "error": {
        "message": "Rate limit reached for model `m` in organization `org_1` service tier "
        "`on_demand` on tokens per minute (TPM): Limit 12000, Used 2542, Requested 9855. "
        "Please try again in 6.5s. Need more tokens? Upgrade to Dev Tier today at "
        "https://console.groq.com/settings/billing",
        "type": "tokens",
        "code": "rate_limit_exceeded",
    }
}


def key_rest(proxy: ProxyHarness, key: str) -> float:
    (view,) = [v for v in proxy.server.gateway.pool.key_views(time.monotonic()) if v.key == key]
    return view.cooldown_remaining


async def test_retry_after_is_when_the_first_key_is_usable_again(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    # k1's quota is spent (it rests cooldown.max, whatever its hint says); k2 is only
    # throttled, for 7 s: the client may come back in 7 s, not 2 and not 300.
    upstream.script_key("k1", Reply(429, json=OPENAI_QUOTA, headers={"Retry-After": "2"}))
    upstream.script_key("k2", Reply(429, json=GROQ_TPM, headers={"Retry-After": "7"}))
    proxy = await make_proxy(
        document(
            {
                "main": provider(
                    upstream.base_url,
                    keys=[{"value": "k1", "name": "k1"}, {"value": "k2", "name": "k2"}],
                )
            }
        )
    )
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "7"
    assert key_rest(proxy, "k1") > 250
    assert 6 < key_rest(proxy, "k2") <= 7


async def test_retry_after_after_a_spent_quota_is_the_keys_rest_not_the_hint(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    # First a short throttle that the proxy waits out, then the quota runs out: the hint
    # seen before the wait is stale, and the one after it is shorter than the real rest.
    upstream.script_key(
        "k1",
        Reply(429, json=GROQ_TPM, headers={"retry-after-ms": "200"}),
        Reply(429, json=OPENAI_QUOTA, headers={"Retry-After": "2"}),
    )
    proxy = await make_proxy(
        document(
            {"main": provider(upstream.base_url, keys=[{"value": "k1", "name": "k1"}])},
            defaults={"max_wait": 1},
        )
    )
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 429
        assert 295 <= int(r.headers["Retry-After"]) <= 300
    assert len(upstream.seen) == 2
    assert key_rest(proxy, "k1") > 295


async def test_last_failure_a_timeout_is_504(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.default = Hang()
    proxy = await make_proxy(
        document(
            {"main": provider(upstream.base_url)},
            defaults={"timeouts": {"connect": 1, "first_byte": 0.3, "idle": 1, "total": 5}},
        )
    )
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 504
        assert "main: timeout" in error_of(await r.read())["message"]
    assert len(upstream.seen) == 1  # a silent upstream is not asked twice


async def test_server_errors_everywhere_are_502(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.default = Reply(503, json={"error": {"message": "overloaded"}})
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 502
        assert error_of(await r.read())["code"] == "upstream_error"
    assert len(upstream.seen) == 2  # retried once on the same provider


async def test_nothing_tryable_for_other_reasons_is_503(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.default = Reply(401, json={"error": {"message": "bad key"}})
    proxy = await make_proxy(document({"main": provider(upstream.base_url, keys=["k1"])}))
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 502
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 503  # the key is disabled: nothing could be tried
        assert "Retry-After" in r.headers
        assert "skipped (disabled)" in error_of(await r.read())["message"]
    assert len(upstream.seen) == 1


async def test_max_attempts_bounds_the_request(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    upstream.default = Reply(429, json={"error": {"message": "slow"}})
    keys = [f"k{i}" for i in range(8)]
    proxy = await make_proxy(
        document({"main": provider(upstream.base_url, keys=keys)}, defaults={"max_attempts": 3})
    )
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 429
        assert r.headers["x-proxy-attempts"] == "3"
    assert len(upstream.seen) == 3


# -- endpoints, auth, bad input -------------------------------------------------------


async def test_auth_accepts_bearer_x_api_key_and_api_key(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    assert proxy.session is not None
    url = proxy.url + "/v1/chat/completions"
    for headers in ({"x-api-key": PROXY_KEY}, {"api-key": PROXY_KEY}, AUTH):
        async with proxy.session.post(url, json=chat(), headers=headers) as r:
            assert r.status == 200, headers
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": PROXY_KEY}):
        async with proxy.session.post(url, json=chat(), headers=headers) as r:
            assert r.status == 401
            assert error_of(await r.read())["code"] == "invalid_api_key"
    async with proxy.session.get(proxy.url + "/v1/models") as r:
        assert r.status == 401
    assert len(upstream.seen) == 3


async def test_health_endpoints_need_no_key(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    assert proxy.session is not None
    for path in ("/healthz", "/readyz", "/metrics"):
        async with proxy.session.get(proxy.url + path) as r:
            assert r.status == 200, path


async def test_readyz_is_503_with_no_provider_enabled(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(
        document({"off": provider("http://127.0.0.1:9/v1", keys=["${UNSET_KEY_VAR}"])})
    )
    async with proxy.get("/readyz") as r:
        assert r.status == 503


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b'{"model": "gpt-test", "temperature": NaN}', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"messages": []}', "'model' is required"),
        (b'{"model": 42}', "non-empty string"),
        (b'{"model": ""}', "non-empty string"),
    ],
)
async def test_bad_input_is_400(
    upstream: FakeUpstream, make_proxy: ProxyFactory, body: bytes, fragment: str
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    async with proxy.post(
        "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400
        error = error_of(await r.read())
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"
    assert not upstream.seen


@pytest.mark.parametrize("rewrite", [False, True])
async def test_a_lone_surrogate_in_the_request_is_forwarded_not_refused(
    upstream: FakeUpstream, make_proxy: ProxyFactory, rewrite: bool
) -> None:
    # Valid JSON (RFC 8259) that orjson refuses: half an emoji, as a JavaScript client cuts it.
    models = {"gpt-test": "upstream-m"} if rewrite else ["gpt-test"]
    proxy = await make_proxy(document({"main": provider(upstream.base_url, models=models)}))
    body = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "Hi \\ud83d"}]}'
    async with proxy.post(
        "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 200
    sent = json.loads(upstream.seen[0].body)
    assert sent["messages"][0]["content"] == "Hi \ud83d"
    assert sent["model"] == ("upstream-m" if rewrite else "gpt-test")


async def test_body_over_the_limit_is_413(upstream: FakeUpstream, make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}, max_body_bytes=1000))
    big = chat(padding="x" * 2000)
    async with proxy.post("/v1/chat/completions", big) as r:
        assert r.status == 413
        assert error_of(await r.read())["code"] == "request_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        yield b'{"model": "gpt-test", "pad": "'
        for _ in range(10):
            yield b"y" * 200
        yield b'"}'

    async with proxy.post("/v1/chat/completions", data=chunks()) as r:
        assert r.status == 413
    assert not upstream.seen


async def test_unknown_path_is_404_and_wrong_method_is_405(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    async with proxy.get("/v1/nothing-here") as r:
        assert r.status == 404
        assert error_of(await r.read())["code"] == "unknown_url"
    async with proxy.get("/v1/chat/completions") as r:
        assert r.status == 405
        assert r.headers["Allow"] == "POST"
        error_of(await r.read())
    async with proxy.post("/healthz", {}) as r:
        assert r.status == 405
        assert r.headers["Allow"] == "GET"
    async with proxy.post("/v1/models", {}) as r:
        assert r.status == 405


async def test_models_lists_public_and_pinned_names(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(
        document(
            {
                "a": provider(upstream.base_url, models=["m1", "m2"]),
                "b": provider(upstream.base_url, tier=2, models={"m1": "b-m1", "x*": "xx"}),
            }
        )
    )
    async with proxy.get("/v1/models") as r:
        listing = await r.json()
    assert listing["object"] == "list"
    ids = [m["id"] for m in listing["data"]]
    assert ids == ["m1", "m2", "a/m1", "a/m2", "b/m1"]
    async with proxy.get("/v1/models/m2") as r:
        assert (await r.json())["id"] == "m2"
    async with proxy.get("/v1/models/b/m1") as r:
        assert r.status == 200
    async with proxy.get("/v1/models/nope") as r:
        assert r.status == 404
        assert error_of(await r.read())["code"] == "model_not_found"


async def test_an_unexpected_error_is_a_500_with_the_request_id_and_no_traceback(
    upstream: FakeUpstream, make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom: internal detail")

    monkeypatch.setattr(proxy.server.gateway.table, "plan", explode)
    async with proxy.post("/v1/chat/completions", chat(), headers={"x-request-id": "rid-7"}) as r:
        assert r.status == 500
        raw = await r.read()
    error = error_of(raw)
    assert "rid-7" in error["message"]
    assert b"Traceback" not in raw and b"boom" not in raw


async def test_client_disconnect_cancels_the_upstream_request(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    import asyncio

    import aiohttp

    upstream.default = Hang()
    proxy = await make_proxy(document({"main": provider(upstream.base_url, keys=["k1"])}))
    with pytest.raises(asyncio.TimeoutError):
        async with proxy.post(
            "/v1/chat/completions", chat(), timeout=aiohttp.ClientTimeout(total=0.3)
        ) as r:
            await r.read()
    assert await upstream.wait_disconnected(0)
    # The key's slot is free again: in-flight back to zero.
    for _ in range(50):
        views = proxy.server.gateway.pool.key_views(0)
        if views[0].in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert views[0].in_flight == 0
