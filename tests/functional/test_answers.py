"""What a 2xx upstream answer must be to be relayed, end to end (SPEC §5-§7).

Routed paths other than the OpenAI JSON APIs may answer any media type (`/v1/audio/speech`
answers MP3), relayed as it came; a web page stays a broken upstream everywhere. Valid JSON
that orjson refuses (an emoji cut in two escaped surrogates by a JavaScript upstream) is
relayed, never dropped.
"""

from __future__ import annotations

import json

import orjson
import pytest

from tests.fakes.upstream import Reply, Stream, UpstreamFactory
from tests.functional.scrape import Scrape
from tests.harness import ProxyFactory, chat, read_sse, two_tiers

MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00fake-mp3-frames\x00\x01\x02"
SPEECH = {"model": "tts-1", "input": "Hello", "voice": "alloy"}


# -- answers that are not JSON -------------------------------------------------------------


async def test_audio_from_another_route_is_relayed_as_it_came(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    # One bad_response would open this breaker: the answers must count as successes.
    proxy, primary, backup = await two_tiers(
        make_proxy, upstream_factory, {"breaker": {"failures": 1, "open_seconds": 30}}
    )
    primary.default = Reply(200, body=MP3, headers={"Content-Type": "audio/mpeg"})
    for _ in range(3):
        async with proxy.post("/v1/audio/speech", SPEECH) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "audio/mpeg"
            assert r.headers["x-proxy-provider"] == "primary"
            assert await r.read() == MP3
    assert len(primary.seen) == 3 and not backup.seen
    assert primary.seen[0].path == "/v1/audio/speech"
    metrics = Scrape(await proxy.metrics_text())
    assert metrics.value("llmproxy_breaker_open", provider="primary") == 0
    attempts = "llmproxy_upstream_attempts_total"
    assert metrics.value(attempts, tier="1", provider="primary", outcome="ok") == 3
    assert metrics.total(attempts, outcome="bad_response") == 0
    assert metrics.total("llmproxy_tokens_total") == 0  # no usage is read from audio


async def test_the_upstreams_content_type_is_relayed_with_its_parameters(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    proxy, primary, _ = await two_tiers(make_proxy, upstream_factory)
    text = "Bonjour, ça va ?\n".encode()
    primary.default = Reply(200, body=text, headers={"Content-Type": "text/plain; charset=utf-8"})
    async with proxy.post("/v1/audio/transcriptions", {"model": "whisper-1"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await r.read() == text


@pytest.mark.parametrize(
    ("path", "reply"),
    [
        (
            "/v1/audio/speech",
            Reply(200, body=b"<html>maintenance</html>", headers={"Content-Type": "text/html"}),
        ),
        (
            "/v1/audio/speech",
            Reply(200, body=b"{oops", headers={"Content-Type": "application/json"}),
        ),
        (
            "/v1/moderations",
            Reply(200, body=b"{oops", headers={"Content-Type": "application/problem+json"}),
        ),
        # No type named (the fake always sends the header; empty is the closest): JSON.
        ("/v1/moderations", Reply(200, body=b"{oops", headers={"Content-Type": ""})),
        (
            "/v1/embeddings",
            Reply(200, body=MP3, headers={"Content-Type": "audio/mpeg"}),
        ),
        (
            "/v1/chat/completions",
            Reply(200, body=b"Hello", headers={"Content-Type": "text/plain"}),
        ),
    ],
    ids=[
        "html-on-another-route",
        "invalid-json-declared-json",
        "invalid-json-declared-plus-json",
        "invalid-json-undeclared",
        "audio-from-embeddings",
        "text-from-chat",
    ],
)
async def test_what_is_still_a_bad_response(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory, path: str, reply: Reply
) -> None:
    proxy, primary, backup = await two_tiers(make_proxy, upstream_factory)
    primary.script(reply)
    body = chat() if path == "/v1/chat/completions" else {"model": "m", "input": "x"}
    async with proxy.post(path, body) as r:
        assert r.status == 200
        assert r.headers["x-proxy-provider"] == "backup"
        assert r.headers["Content-Type"] == "application/json"
        orjson.loads(await r.read())
    assert len(primary.seen) == 1 and len(backup.seen) == 1
    metrics = Scrape(await proxy.metrics_text())
    attempts = "llmproxy_upstream_attempts_total"
    assert metrics.value(attempts, tier="1", provider="primary", outcome="bad_response") == 1


async def test_json_from_another_route_is_still_read_for_usage(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    proxy, primary, _ = await two_tiers(make_proxy, upstream_factory)
    answer = {"id": "x", "results": [], "usage": {"prompt_tokens": 7, "completion_tokens": 0}}
    primary.default = Reply(200, json=answer)
    async with proxy.post("/v1/moderations", {"model": "m", "input": "x"}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/json"
        assert await r.json() == answer
    metrics = Scrape(await proxy.metrics_text())
    assert metrics.value("llmproxy_tokens_total", tier="1", provider="primary", kind="prompt") == 7


# -- valid JSON that orjson refuses ------------------------------------------------------


def chunk(content: str, finish: str | None = None) -> bytes:
    """A chat chunk with `content` written into the JSON as given (escapes included)."""
    finish_json = "null" if finish is None else f'"{finish}"'
    return (
        '{"id":"c1","object":"chat.completion.chunk","model":"gpt-test","choices":'
        f'[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":{finish_json}}}]}}'
    ).encode()


async def test_an_emoji_cut_in_two_surrogates_arrives_whole(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    proxy, primary, backup = await two_tiers(make_proxy, upstream_factory)
    # The high half is the stream's first event: it is what makes the attempt an answer.
    events = [chunk("\\ud83d"), chunk("\\ude00"), chunk(" ok"), chunk("", "stop")]
    primary.script(Stream(events=[b"data: " + e + b"\n\n" for e in events]))
    async with proxy.post("/v1/chat/completions", chat(stream=True)) as r:
        assert r.status == 200
        assert r.headers["x-proxy-provider"] == "primary"
        data = await read_sse(r)
    assert data == [*events, b"[DONE]"]  # each event as the same compact JSON
    pieces = [json.loads(d)["choices"][0]["delta"]["content"] for d in data[:-1]]
    assert (
        "".join(pieces).encode("utf-16", "surrogatepass").decode("utf-16") == "\N{GRINNING FACE} ok"
    )
    assert not backup.seen
    metrics = Scrape(await proxy.metrics_text())
    malformed = "llmproxy_stream_malformed_events_total"
    assert metrics.value(malformed, tier="1", provider="primary") == 0


async def test_a_plain_answer_with_a_lone_surrogate_is_relayed_byte_for_byte(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory
) -> None:
    proxy, primary, backup = await two_tiers(make_proxy, upstream_factory)
    answer = (
        b'{"id":"c1","object":"chat.completion","model":"gpt-test","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"cut \\ud83d"},"finish_reason":"length"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
    )
    primary.script(Reply(200, body=answer))
    async with proxy.post("/v1/chat/completions", chat()) as r:
        assert r.status == 200
        assert r.headers["x-proxy-provider"] == "primary"
        assert await r.read() == answer
    assert not backup.seen
    metrics = Scrape(await proxy.metrics_text())
    tokens = "llmproxy_tokens_total"
    assert metrics.value(tokens, tier="1", provider="primary", kind="completion") == 2
