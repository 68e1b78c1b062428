"""What is too big or too deep to pass, end to end.

A plain answer is held whole before it is relayed, so `server.max_response_bytes` bounds it,
as inflated: over the cap it is a `bad_response` and the next provider answers (SPEC §5). A
client body nested too deeply to be written back with a rewritten model is the client's
fault: a 400, and no upstream sees it.
"""

from __future__ import annotations

import gzip
import time

import aiohttp
import orjson
import pytest

from proxy import attempt
from proxy.attempt import AttemptLimits, Failed
from proxy.classify import Outcome
from tests.fakes.upstream import FakeUpstream, Hang, Reply, Stream, UpstreamFactory
from tests.harness import ProxyFactory, ProxyHarness, chat, document, provider, read_sse, two_tiers

CAP = 64 * 1024


def completion(text: str) -> bytes:
    """A chat completion whose body is about `len(text)` bytes long."""
    return orjson.dumps(
        {
            "id": "chatcmpl-big",
            "object": "chat.completion",
            "model": "gpt-test",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        }
    )


def sized(total: int) -> bytes:
    """A chat completion of exactly `total` bytes."""
    overhead = len(completion(""))
    return completion("x" * (total - overhead))


async def served_by_backup(proxy: ProxyHarness, backup: FakeUpstream) -> None:
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 200
        assert r.headers["x-proxy-provider"] == "backup"
        assert r.headers["x-proxy-attempts"] == "2"
        body = orjson.loads(await r.read())
    assert "backup" in body["choices"][0]["message"]["content"]
    assert len(backup.seen) == 1


# -- answers over the cap ------------------------------------------------------------------


async def test_an_answer_over_the_cap_fails_over_to_the_next_provider(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    proxy, primary, backup = await two_tiers(make_proxy, upstream_factory, max_response_bytes=CAP)
    primary.script(Reply(body=sized(CAP + 1)))  # Content-Length says it: refused unread
    await served_by_backup(proxy, backup)
    assert len(primary.seen) == 1  # a bad response is not asked twice
    # The connection given up mid-body is not reused: the primary answers the next one.
    primary.script(Reply())
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 200
        assert r.headers["x-proxy-provider"] == "primary"
        orjson.loads(await r.read())


async def test_an_endless_answer_is_cut_at_the_cap(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    # Chunked, no Content-Length, and it never ends: only counting what arrives can stop it.
    proxy, primary, backup = await two_tiers(make_proxy, upstream_factory, max_response_bytes=CAP)
    chunk = b"x" * 16384
    primary.script(
        Stream(
            events=[b'{"id": "chatcmpl-1", "pad": "', *[chunk] * 8],
            headers={"Content-Type": "application/json"},
            done=False,
            end="hang",
        )
    )
    started = time.monotonic()
    await served_by_backup(proxy, backup)
    assert time.monotonic() - started < 1.5  # not the deadline: the cap ended it


async def test_a_gzip_answer_that_inflates_past_the_cap_is_refused(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    proxy, primary, backup = await two_tiers(make_proxy, upstream_factory, max_response_bytes=CAP)
    bomb = gzip.compress(completion(" " * (4 * 1024 * 1024)))
    assert len(bomb) < CAP // 8  # small on the wire; what it inflates to is what counts
    primary.script(Reply(body=bomb, headers={"Content-Encoding": "gzip"}))
    await served_by_backup(proxy, backup)


@pytest.mark.parametrize("encoding", [None, "gzip"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
async def test_an_answer_up_to_the_cap_is_relayed_unchanged(
    make_proxy: ProxyFactory,
    upstream_factory: UpstreamFactory,
    encoding: str | None,
    chunked: bool,
) -> None:
    proxy, primary, backup = await two_tiers(make_proxy, upstream_factory, max_response_bytes=CAP)
    answer = sized(CAP)  # exactly at the cap: still an answer
    wire = gzip.compress(answer) if encoding else answer
    headers = {"Content-Encoding": encoding} if encoding else {}
    if chunked:
        parts = [wire[i : i + 4096] for i in range(0, len(wire), 4096)]
        headers["Content-Type"] = "application/json"
        primary.script(Stream(events=list(parts), headers=headers, done=False))
    else:
        primary.script(Reply(body=wire, headers=headers))
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 200
        assert r.headers["x-proxy-provider"] == "primary"
        assert await r.read() == answer
    assert not backup.seen


async def test_streams_are_not_bound_by_the_answer_cap(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    proxy, primary, backup = await two_tiers(make_proxy, upstream_factory, max_response_bytes=1024)
    text = ["y" * 600] * 8  # 4.8 KB of content, each event under the cap, the whole over it
    events: list[object] = [
        {
            "id": "chatcmpl-s",
            "object": "chat.completion.chunk",
            "model": "gpt-test",
            "choices": [{"index": 0, "delta": {"content": part}, "finish_reason": None}],
        }
        for part in text
    ]
    events.append(
        {
            "id": "chatcmpl-s",
            "object": "chat.completion.chunk",
            "model": "gpt-test",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
    )
    primary.script(Stream(events=events))
    async with proxy.post("/v1/chat/completions", chat(stream=True)) as r:
        assert r.status == 200
        assert r.headers["x-proxy-provider"] == "primary"
        data = await read_sse(r)
    assert data[-1] == b"[DONE]"
    got = "".join(orjson.loads(d)["choices"][0]["delta"].get("content", "") for d in data[:-1])
    assert got == "".join(text)
    assert not backup.seen


async def test_one_attempt_reports_the_cap_as_a_bad_response(upstream: FakeUpstream) -> None:
    upstream.script(Reply(body=sized(2048)))
    limits = AttemptLimits(1.0, 5.0, 5.0, time.monotonic() + 10.0, max_response_bytes=2047)
    async with aiohttp.ClientSession() as session:
        failed = await attempt.plain(
            session,
            upstream.base_url + "/chat/completions",
            orjson.dumps(chat()),
            {"Content-Type": "application/json"},
            limits,
        )
    assert isinstance(failed, Failed)
    assert failed.verdict.outcome is Outcome.BAD_RESPONSE
    assert failed.detail == "answer over server.max_response_bytes"
    assert failed.body == b""


# -- bodies too deep to rewrite ------------------------------------------------------------


def nested(depth: int, stream: bool = False) -> bytes:
    """A chat request whose `metadata` is `depth` lists deep: valid JSON that orjson parses
    (up to 1024 levels) but does not write past 254; built by hand, as `json.dumps` cannot."""
    head = orjson.dumps(chat(stream=stream))[:-1]
    return head + b',"metadata":{"v":' + b"[" * depth + b'"deep"' + b"]" * depth + b"}}"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_body_too_deep_to_rewrite_is_a_400(
    upstream: FakeUpstream, make_proxy: ProxyFactory, stream: bool
) -> None:
    proxy = await make_proxy(
        document({"main": provider(upstream.base_url, keys=["k1"], models={"gpt-test": "up"})})
    )
    async with proxy.post(
        "/v1/chat/completions",
        data=nested(1000, stream),
        headers={"Content-Type": "application/json"},
    ) as r:
        assert r.status == 400
        error = orjson.loads(await r.read())["error"]
    assert error["type"] == "invalid_request_error"
    assert "nested too deeply" in error["message"]
    assert not upstream.seen
    # The key taken for the attempt went back to the pool: the next request gets it.
    view = proxy.server.gateway.pool.key_views(time.monotonic())[0]
    assert (view.state, view.in_flight) == ("ready", 0)
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 200
    assert [seen.model for seen in upstream.seen] == ["up"]


async def test_a_deep_body_passes_when_its_model_is_not_rewritten(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(document({"main": provider(upstream.base_url)}))
    body = nested(1000)
    async with proxy.post(
        "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 200
    assert upstream.seen[0].body == body  # forwarded byte for byte, never re-encoded


async def test_a_body_too_deep_for_a_later_tier_ends_a_started_stream_with_the_error(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    # Keepalives sent the stream's headers while the first tier stayed silent; the second
    # tier renames the model, and the body cannot be written for it.
    silent = await upstream_factory("silent")
    renamed = await upstream_factory("renamed")
    silent.script(Hang())
    proxy = await make_proxy(
        document(
            {
                "silent": provider(silent.base_url, models=["gpt-test"]),
                "renamed": provider(renamed.base_url, tier=2, models={"gpt-test": "up"}),
            },
            defaults={"timeouts": {"connect": 1, "first_byte": 0.6, "idle": 1, "total": 10}},
            sse_keepalive_seconds=0.1,
        )
    )
    deep = nested(1000, stream=True)
    async with proxy.post(
        "/v1/chat/completions", data=deep, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 200
        data = await read_sse(r)
    assert len(data) == 1  # the error event, and no [DONE]
    error = orjson.loads(data[0])["error"]
    assert error["type"] == "invalid_request_error"
    assert "nested too deeply" in error["message"]
    assert len(silent.seen) == 1
    assert not renamed.seen
