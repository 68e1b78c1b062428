"""The fake upstream itself, over real sockets: each behaviour, scripting, default answers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes.demo import split_events
from tests.fakes.upstream import (
    FakeUpstream,
    Hang,
    Reply,
    Reset,
    Stream,
    UpstreamFactory,
    chat_stream_events,
    choose_by_model,
    sse_event,
)

REPO = Path(__file__).resolve().parents[2]
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}]}
STREAM_CHAT = CHAT | {"stream": True}


@pytest.fixture(autouse=True)
def no_warnings_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Expected disconnects must not log tracebacks (aiohttp.server, asyncio)."""
    caplog.set_level(logging.WARNING)
    yield
    for phase in ("call", "teardown"):
        noisy = [r.getMessage() for r in caplog.get_records(phase) if r.levelno >= logging.WARNING]
        assert noisy == []


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def data_events(raw: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    events = raw.replace(b"\r\n", b"\n").split(b"\n\n")
    return [
        line.removeprefix(b"data: ").decode()
        for event in events
        for line in event.split(b"\n")
        if line.startswith(b"data: ")
    ]


async def post(
    http: aiohttp.ClientSession, url: str, body: object = CHAT, **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    async with http.post(url, json=body, **kwargs) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def raw_exchange(port: int, request: bytes) -> tuple[bytes, OSError | None]:
    """Send raw bytes and read to the end with plain socket calls: the kernel hands out
    data received before a reset, where stream readers would raise first."""
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, request)
        received = b""
        try:
            while chunk := await loop.sock_recv(sock, 65536):
                received += chunk
        except OSError as exc:
            return received, exc
        return received, None


def raw_post(path: str, body: object) -> bytes:
    payload = orjson.dumps(body)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload


# --- Default answers -----------------------------------------------------------------


async def test_default_chat_completion(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, headers, raw = await post(http, upstream.base_url + "/chat/completions")
    body = orjson.loads(raw)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert body["object"] == "chat.completion"
    assert re.fullmatch(r"chatcmpl-\w+", body["id"])
    assert body["model"] == "gpt-test"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello from fake"}
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


async def test_default_answer_names_the_upstream(
    upstream_factory: UpstreamFactory, http: aiohttp.ClientSession
) -> None:
    other = await upstream_factory("backup")
    _, _, raw = await post(http, other.base_url + "/chat/completions")
    assert orjson.loads(raw)["choices"][0]["message"]["content"] == "Hello from backup"


async def test_default_chat_stream(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, headers, raw = await post(http, upstream.base_url + "/chat/completions", STREAM_CHAT)
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    events = data_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant"
    assert [d.get("content") for d in deltas[1:4]] == ["Hello", " from", " fake"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["stop"]
    assert all("usage" not in c for c in chunks)


async def test_default_chat_stream_with_usage(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = STREAM_CHAT | {"stream_options": {"include_usage": True}}
    _, _, raw = await post(http, upstream.base_url + "/chat/completions", body)
    events = data_events(raw)
    usage_chunk = orjson.loads(events[-2])
    assert events[-1] == "[DONE]"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 3


async def test_default_text_completion(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-instruct", "prompt": "Say hi"}
    _, _, raw = await post(http, upstream.base_url + "/completions", body)
    answer = orjson.loads(raw)
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"] == "Hello from fake"
    assert answer["model"] == "gpt-instruct"

    _, _, raw = await post(http, upstream.base_url + "/completions", body | {"stream": True})
    events = data_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello from fake"
    assert {c["object"] for c in chunks} == {"text_completion"}


async def test_default_embeddings(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "embed-small", "input": ["one", "two words"]}
    _, _, raw = await post(http, upstream.base_url + "/embeddings", body)
    answer = orjson.loads(raw)
    assert answer["object"] == "list"
    assert [d["index"] for d in answer["data"]] == [0, 1]
    assert all(isinstance(x, float) for d in answer["data"] for x in d["embedding"])
    assert answer["usage"]["prompt_tokens"] == 3


async def test_default_responses(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-test", "input": "Hi"}
    _, _, raw = await post(http, upstream.base_url + "/responses", body)
    answer = orjson.loads(raw)
    assert answer["object"] == "response"
    assert answer["status"] == "completed"
    assert answer["output"][0]["content"][0]["text"] == "Hello from fake"


async def test_default_responses_stream_has_event_names_and_no_done(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = {"model": "gpt-test", "input": "Hi", "stream": True}
    _, _, raw = await post(http, upstream.base_url + "/responses", body)
    names = re.findall(rb"^event: (\S+)$", raw, flags=re.MULTILINE)
    assert names == [
        b"response.created",
        *[b"response.output_text.delta"] * 3,
        b"response.completed",
    ]
    events = data_events(raw)
    assert "[DONE]" not in events
    assert [orjson.loads(e)["type"] for e in events] == [n.decode() for n in names]


async def test_models_list_and_one_model(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    async with http.get(upstream.base_url + "/models") as resp:
        listing = await resp.json()
    assert listing["object"] == "list"
    assert len(listing["data"]) >= 2
    async with http.get(upstream.base_url + "/models/org/some-model") as resp:
        assert (await resp.json())["id"] == "org/some-model"


# --- Reply ---------------------------------------------------------------------------


async def test_reply_status_json_and_headers(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    error = {"error": {"message": "slow down", "code": "rate_limit_exceeded"}}
    upstream.script(Reply(429, json=error, headers={"Retry-After": "7"}))
    status, headers, raw = await post(http, upstream.base_url + "/chat/completions")
    assert (status, headers["Retry-After"], orjson.loads(raw)) == (429, "7", error)


async def test_reply_raw_body_is_sent_as_is(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    html = b"<html><body>Gateway says hi</body></html>"
    upstream.script(Reply(body=html, headers={"Content-Type": "text/html"}), Reply(body=b"{oops"))
    status, headers, raw = await post(http, upstream.base_url + "/chat/completions")
    assert (status, headers["Content-Type"], raw) == (200, "text/html", html)
    _, headers, raw = await post(http, upstream.base_url + "/chat/completions")
    assert (headers["Content-Type"], raw) == ("application/json", b"{oops")


async def test_reply_delay_holds_the_headers(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Reply(delay=0.3))
    started = time.monotonic()
    status, _, _ = await post(http, upstream.base_url + "/chat/completions")
    assert status == 200
    assert time.monotonic() - started >= 0.25


# --- Stream --------------------------------------------------------------------------


async def test_stream_encodes_dicts_strings_and_raw_bytes(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    events: list[object] = [
        {"a": 1, "b": [1, 2]},
        "not json at all",
        b'data: {"spl',
        b'it": true}\r\n\r\n',
        b": a comment\n\n",
    ]
    upstream.script(Stream(events=events, status=201, headers={"X-Extra": "yes"}))
    status, headers, raw = await post(http, upstream.base_url + "/chat/completions")
    assert (status, headers["X-Extra"]) == (201, "yes")
    assert raw == (
        b'data: {"a":1,"b":[1,2]}\n\n'
        b"data: not json at all\n\n"
        b'data: {"split": true}\r\n\r\n'
        b": a comment\n\n"
        b"data: [DONE]\n\n"
    )


async def test_stream_without_done(upstream: FakeUpstream, http: aiohttp.ClientSession) -> None:
    upstream.script(Stream(events=[{"n": 1}], done=False), Stream(done=False))
    _, _, raw = await post(http, upstream.base_url + "/chat/completions")
    assert raw == b'data: {"n":1}\n\n'
    _, _, raw = await post(http, upstream.base_url + "/chat/completions", STREAM_CHAT)
    assert "[DONE]" not in data_events(raw)


async def test_stream_first_delay_sends_headers_at_once(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Stream(events=[{"n": 1}], first_delay=0.4))
    started = time.monotonic()
    async with http.post(upstream.base_url + "/chat/completions", json=CHAT) as resp:
        headers_at = time.monotonic()
        first = await resp.content.readany()
        first_at = time.monotonic()
    assert first.startswith(b"data: ")
    assert first_at - headers_at >= 0.3
    assert headers_at - started < first_at - started


async def test_stream_header_delay_holds_the_headers(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Stream(events=[{"n": 1}], header_delay=0.3))
    started = time.monotonic()
    async with http.post(upstream.base_url + "/chat/completions", json=CHAT) as resp:
        assert time.monotonic() - started >= 0.25
        assert data_events(await resp.read()) == ['{"n":1}', "[DONE]"]


async def test_stream_delay_spaces_the_events(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Stream(events=[{"n": 1}, {"n": 2}, {"n": 3}], delay=0.15))
    arrivals: list[float] = []
    async with http.post(upstream.base_url + "/chat/completions", json=CHAT) as resp:
        async for _ in resp.content.iter_any():
            arrivals.append(time.monotonic())
    # Four writes ([DONE] included), at least 0.45 s from the first to the last.
    assert arrivals[-1] - arrivals[0] >= 0.4


async def test_stream_reset_ends_without_terminator(upstream: FakeUpstream) -> None:
    upstream.script(Stream(events=[{"n": 1}, {"n": 2}], end="reset", done=False))
    received, error = await raw_exchange(upstream.port, raw_post("/v1/chat/completions", CHAT))
    assert isinstance(error, ConnectionResetError)
    assert received.startswith(b"HTTP/1.1 200")
    assert b'data: {"n":1}\n\n' in received
    assert b'data: {"n":2}\n\n' in received
    assert not received.endswith(b"0\r\n\r\n")


async def test_stream_reset_is_a_payload_error_for_aiohttp(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Stream(events=[{"n": 1}], end="reset"))
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(http, upstream.base_url + "/chat/completions")
    assert upstream.seen[0].disconnected is False


async def test_stream_close_ends_with_terminator(upstream: FakeUpstream) -> None:
    upstream.script(Stream(events=[{"n": 1}]))
    request = raw_post("/v1/chat/completions", CHAT).replace(
        b"Host:", b"Connection: close\r\nHost:"
    )
    received, error = await raw_exchange(upstream.port, request)
    assert error is None
    assert received.endswith(b"0\r\n\r\n")


async def test_stream_hang_marks_the_client_disconnected(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Stream(events=[{"n": 1}], end="hang"))
    async with http.post(upstream.base_url + "/chat/completions", json=CHAT) as resp:
        received = b""
        while b"[DONE]" not in received:
            received += await resp.content.readany()
        assert upstream.seen[0].disconnected is False
        resp.close()
    assert await upstream.wait_disconnected(0)


async def test_slow_stream_notices_a_client_that_leaves(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Stream(events=[{"n": 1}, {"n": 2}], delay=30))
    async with http.post(upstream.base_url + "/chat/completions", json=CHAT) as resp:
        assert (await resp.content.readany()).startswith(b"data: ")
        resp.close()
    assert await upstream.wait_disconnected(0)


async def test_fast_stream_survives_a_client_that_leaves(upstream: FakeUpstream) -> None:
    # Big enough that the client is gone while the fake is still writing.
    upstream.script(Stream(events=[{"pad": "x" * 4096}] * 2000))
    reader, writer = await asyncio.open_connection("127.0.0.1", upstream.port)
    writer.write(raw_post("/v1/chat/completions", CHAT))
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    writer.transport.abort()
    assert await upstream.wait_disconnected(0)


# --- Reset and Hang ------------------------------------------------------------------


async def test_reset_aborts_before_any_byte(upstream: FakeUpstream) -> None:
    upstream.script(Reset())
    received, error = await raw_exchange(upstream.port, raw_post("/v1/chat/completions", CHAT))
    assert (received, type(error)) == (b"", ConnectionResetError)
    assert upstream.seen[0].disconnected is False


async def test_reset_is_a_connection_error_for_aiohttp(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Reset())
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, upstream.base_url + "/chat/completions")


async def test_hang_marks_the_client_disconnected(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Hang())
    with pytest.raises(TimeoutError):
        await post(
            http,
            upstream.base_url + "/chat/completions",
            timeout=aiohttp.ClientTimeout(total=0.2),
        )
    assert await upstream.wait_disconnected(0)
    assert await upstream.wait_disconnected(1, timeout=0.05) is False


async def test_delayed_reply_marks_the_client_disconnected(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Reply(delay=30))
    with pytest.raises(TimeoutError):
        await post(
            http,
            upstream.base_url + "/chat/completions",
            timeout=aiohttp.ClientTimeout(total=0.2),
        )
    assert await upstream.wait_disconnected(0)


async def test_close_ends_hanging_requests(
    upstream_factory: UpstreamFactory, http: aiohttp.ClientSession
) -> None:
    upstream = await upstream_factory()
    upstream.script(Hang())
    pending = asyncio.create_task(post(http, upstream.base_url + "/chat/completions"))
    assert await upstream.wait_seen(1)
    # Without cancelling its handlers, close() would wait out aiohttp's 60 s shutdown.
    await asyncio.wait_for(upstream.close(), timeout=10)
    with pytest.raises(aiohttp.ClientConnectionError):
        await pending
    assert upstream.seen[0].disconnected is False


# --- Scripting and recording ---------------------------------------------------------


async def test_script_answers_in_order_then_default(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Reply(201), Reply(202))
    upstream.script(Reply(203))
    statuses = [(await post(http, upstream.base_url + "/chat/completions"))[0] for _ in range(4)]
    assert statuses == [201, 202, 203, 200]


async def test_default_behaviour_replaces_the_automatic_answer(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.default = Reply(503)
    upstream.script(Reply(201))
    statuses = [(await post(http, upstream.base_url + "/chat/completions"))[0] for _ in range(3)]
    assert statuses == [201, 503, 503]


async def test_script_key_takes_precedence(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    upstream.script(Reply(500), Reply(501))
    upstream.script_key("key-a", Reply(429))
    url = upstream.base_url + "/chat/completions"

    async def status(headers: dict[str, str]) -> int:
        return (await post(http, url, headers=headers))[0]

    assert await status({"Authorization": "Bearer key-a"}) == 429
    assert await status({}) == 500
    assert await status({"Authorization": "Bearer key-b"}) == 501
    assert await status({"Authorization": "Bearer key-a"}) == 200


async def test_seen_records_the_request(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    before = time.monotonic()
    await post(
        http,
        upstream.base_url + "/chat/completions?x=1",
        headers={"Authorization": "Bearer sk-one", "X-Custom": "v"},
    )
    await post(http, upstream.base_url + "/embeddings", {"input": "x"}, headers={"api-key": "az"})
    await post(http, upstream.base_url + "/responses", CHAT, headers={"x-api-key": "anth"})
    async with http.post(upstream.base_url + "/chat/completions", data=b"not json") as resp:
        await resp.read()
    first, second, third, fourth = upstream.seen
    assert (first.method, first.path, first.key) == ("POST", "/v1/chat/completions", "sk-one")
    assert first.headers["x-custom"] == "v"
    assert first.json == CHAT
    assert orjson.loads(first.body) == CHAT
    assert first.at >= before
    assert (second.key, third.key, fourth.key) == ("az", "anth", None)
    assert (fourth.body, fourth.json) == (b"not json", None)
    assert "sk-one" not in repr(first)


async def test_large_request_bodies_are_accepted(
    upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = CHAT | {"messages": [{"role": "user", "content": "word " * 1_000_000}]}
    # A file-like body: aiohttp warns about large raw bytes.
    payload = io.BytesIO(orjson.dumps(body))
    async with http.post(upstream.base_url + "/chat/completions", data=payload) as resp:
        assert resp.status == 200
    assert upstream.seen[0].json == body


async def test_wait_seen_times_out_with_false(upstream: FakeUpstream) -> None:
    assert await upstream.wait_seen(1, timeout=0.05) is False


def test_demo_splits_events_cut_anywhere() -> None:
    raw = b'data: {"a": 1}\r\n\r\n: comment\n\nevent: x\ndata: one\ndata: two\n\ndata: [DONE]\n\n'
    for cut in range(len(raw) + 1):
        first, rest = split_events(raw[:cut])
        second, rest = split_events(rest + raw[cut:])
        assert (first + second, rest) == (['{"a": 1}', "one\ntwo", "[DONE]"], b"")


def test_helpers_build_chat_chunks_and_events() -> None:
    events = chat_stream_events("m", ["a", "b"], include_usage=True, finish_reason=None)
    assert len(events) == 4  # role, two parts, usage; no finish chunk
    assert sse_event({"x": 1}, event="ping") == b'event: ping\ndata: {"x":1}\n\n'
    with pytest.raises(ValueError, match=r"Stream\.end"):
        Stream(end="explode")  # type: ignore[arg-type]


# --- Standalone behaviours -----------------------------------------------------------


@pytest.fixture
async def by_model(upstream: FakeUpstream) -> FakeUpstream:
    upstream.chooser = functools.partial(choose_by_model, event_delay=0, slow_delay=0.3)
    return upstream


async def test_model_ratelimited_is_429(
    by_model: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = CHAT | {"model": "demo-chat-ratelimited"}
    status, headers, raw = await post(http, by_model.base_url + "/chat/completions", body)
    assert (status, headers["Retry-After"]) == (429, "30")
    assert orjson.loads(raw)["error"]["code"] == "rate_limit_exceeded"


async def test_model_error_is_500(by_model: FakeUpstream, http: aiohttp.ClientSession) -> None:
    body = STREAM_CHAT | {"model": "demo-error"}
    status, _, raw = await post(http, by_model.base_url + "/chat/completions", body)
    assert status == 500
    assert "error" in orjson.loads(raw)


async def test_model_slow_delays_the_first_event(
    by_model: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    body = STREAM_CHAT | {"model": "demo-slow"}
    async with http.post(by_model.base_url + "/chat/completions", json=body) as resp:
        headers_at = time.monotonic()
        first = await resp.content.readany()
        assert time.monotonic() - headers_at >= 0.25
        assert data_events(first + await resp.read())[-1] == "[DONE]"


async def test_other_models_get_the_default_answer(
    by_model: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    status, _, raw = await post(http, by_model.base_url + "/chat/completions", STREAM_CHAT)
    assert status == 200
    assert data_events(raw)[-1] == "[DONE]"
    status, _, raw = await post(http, by_model.base_url + "/chat/completions", CHAT)
    assert orjson.loads(raw)["object"] == "chat.completion"


@pytest.mark.slow
async def test_standalone_process_serves_until_sigterm(http: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.upstream",
        "--port",
        "0",
        "--name",
        "proc",
        "--event-delay",
        "0",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line
        body = CHAT | {"model": "proc-ratelimited"}
        status, _, _ = await post(http, match[1] + "/chat/completions", body)
        assert status == 429
        _, _, raw = await post(http, match[1] + "/chat/completions", CHAT)
        assert orjson.loads(raw)["choices"][0]["message"]["content"] == "Hello from proc"
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
        assert (process.returncode, stderr) == (0, b"")
    finally:
        if process.returncode is None:
            process.kill()
            with contextlib.suppress(Exception):
                await process.wait()


async def test_stream_reset_delivers_a_large_stream_first(upstream: FakeUpstream) -> None:
    events: list[object] = [{"n": n, "pad": "x" * 1000} for n in range(1000)]
    upstream.script(Stream(events=events, end="reset", done=False))
    received, error = await raw_exchange(upstream.port, raw_post("/v1/chat/completions", CHAT))
    assert isinstance(error, ConnectionResetError)
    assert b'{"n":999,' in received
