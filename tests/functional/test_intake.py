"""How the proxy reads what a client sends, over raw sockets: content codings, slow and stalled
clients, header bytes that are not UTF-8, and `Expect: 100-continue` (SPEC §7, §8)."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from proxy import requestbody, server
from tests.fakes.upstream import FakeUpstream
from tests.functional.scrape import Scrape
from tests.harness import PROXY_KEY, ProxyFactory, ProxyHarness, chat, document, provider

CHAT = orjson.dumps(chat())
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def error(self) -> dict[str, Any]:
        parsed = orjson.loads(self.body)
        assert set(parsed) == {"error"}
        assert set(parsed["error"]) == {"message", "type", "param", "code"}
        return parsed["error"]  # type: ignore[no-any-return]


async def read_answer(reader: asyncio.StreamReader, timeout: float = 5) -> Answer:
    """One HTTP/1.1 response (interim 1xx answers included as answers of their own)."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
    return Answer(int(status_line.split()[1]), headers, body)


def request_head(
    path: str = "/v1/chat/completions",
    *,
    method: str = "POST",
    length: int | None = len(CHAT),
    auth: bytes = b"Bearer " + PROXY_KEY.encode(),
    extra: bytes = b"",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    head = b"%s %s %s\r\nHost: proxy\r\nAuthorization: %s\r\n" % (
        method.encode(),
        path.encode(),
        version,
        auth,
    )
    if length is not None:
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % length
    return head + extra + b"\r\n"


async def connect(proxy: ProxyHarness) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the server closes the connection (EOF) within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            return await reader.read() == b""
    except TimeoutError:
        return False


async def start(make_proxy: ProxyFactory, upstream: FakeUpstream, **server: Any) -> ProxyHarness:
    return await make_proxy(document({"main": provider(upstream.base_url)}, **server))


# -- content codings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("br", lambda body: body)],
)
async def test_a_compressed_body_is_refused_with_415(
    upstream: FakeUpstream, make_proxy: ProxyFactory, coding: str, encode: Any
) -> None:
    proxy = await start(make_proxy, upstream)
    async with proxy.post(
        "/v1/chat/completions",
        data=encode(CHAT),
        headers={"Content-Type": "application/json", "Content-Encoding": coding},
    ) as r:
        assert r.status == 415
        assert r.headers["Accept-Encoding"] == "identity"
        assert r.headers["x-request-id"]
        error = (await r.json())["error"]
    assert error["code"] == "unsupported_content_encoding"
    assert error["type"] == "invalid_request_error"
    assert coding in error["message"]
    assert not upstream.seen
    scrape = Scrape(await proxy.metrics_text())
    labels = {"route": "chat_completions", "model": "other", "status": "415"}
    assert scrape.value("llmproxy_requests_total", **labels) == 1


async def test_a_compressed_body_is_refused_before_it_is_sent(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    # Only the headers go out: the answer must not wait for (or inflate) a body.
    proxy = await start(make_proxy, upstream)
    reader, writer = await connect(proxy)
    writer.write(request_head(length=100_000, extra=b"Content-Encoding: gzip\r\n"))
    answer = await read_answer(reader)
    writer.close()
    assert answer.status == 415
    assert answer.error()["code"] == "unsupported_content_encoding"
    assert not upstream.seen


@pytest.mark.parametrize("key", [PROXY_KEY, "wrong"])
async def test_a_refused_compressed_body_is_never_inflated(
    upstream: FakeUpstream, make_proxy: ProxyFactory, key: str
) -> None:
    # A body that is not gzip at all: inflating it would fail and break the connection, so the
    # next request on it is served only if the refused body was skipped as the bytes it is.
    proxy = await start(make_proxy, upstream)
    reader, writer = await connect(proxy)
    junk = b"certainly not gzip" * 100
    head = request_head(length=len(junk), auth=f"Bearer {key}".encode())
    writer.write(head.replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n") + junk)
    assert (await read_answer(reader)).status == (415 if key == PROXY_KEY else 401)
    writer.write(request_head() + CHAT)
    assert (await read_answer(reader)).status == 200
    writer.close()
    assert [seen.body for seen in upstream.seen] == [CHAT]


async def test_a_compressed_body_with_a_wrong_key_is_a_401(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await start(make_proxy, upstream)
    async with proxy.post(
        "/v1/chat/completions",
        data=gzip.compress(CHAT),
        headers={"Authorization": "Bearer wrong", "Content-Encoding": "gzip"},
    ) as r:
        assert r.status == 401
    assert not upstream.seen


@pytest.mark.parametrize("coding", ["identity", "Identity", ""])
async def test_an_identity_body_is_relayed(
    upstream: FakeUpstream, make_proxy: ProxyFactory, coding: str
) -> None:
    proxy = await start(make_proxy, upstream)
    async with proxy.post(
        "/v1/chat/completions",
        data=CHAT,
        headers={"Content-Type": "application/json", "Content-Encoding": coding},
    ) as r:
        assert r.status == 200
    assert upstream.seen[0].body == CHAT
    assert "content-encoding" not in upstream.seen[0].headers


# -- slow clients -----------------------------------------------------------------------


async def test_a_stalled_body_gets_408_and_the_connection_closes(
    upstream: FakeUpstream, make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(requestbody, "BODY_SILENCE_SECONDS", 0.3)
    proxy = await start(make_proxy, upstream)
    reader, writer = await connect(proxy)
    writer.write(request_head(length=100) + b'{"model": ')
    answer = await read_answer(reader, timeout=5)
    assert answer.status == 408
    assert answer.headers["connection"] == "close"
    error = answer.error()
    assert error["code"] == "request_timeout"
    assert "0.3 seconds" in error["message"]
    assert not upstream.seen
    writer.close()
    scrape = Scrape(await proxy.metrics_text())
    labels = {"route": "chat_completions", "model": "other", "status": "408"}
    assert scrape.value("llmproxy_requests_total", **labels) == 1


async def test_a_slow_body_that_keeps_coming_is_read_to_the_end(
    upstream: FakeUpstream, make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bound is on silence, not on the whole upload, which here takes ~3x the bound.
    monkeypatch.setattr(requestbody, "BODY_SILENCE_SECONDS", 0.3)
    proxy = await start(make_proxy, upstream)
    reader, writer = await connect(proxy)
    writer.write(request_head())
    step = len(CHAT) // 8 + 1
    for start_at in range(0, len(CHAT), step):
        await asyncio.sleep(0.1)
        writer.write(CHAT[start_at : start_at + step])
    answer = await read_answer(reader)
    writer.close()
    assert answer.status == 200
    assert upstream.seen[0].body == CHAT


async def test_idle_and_half_sent_connections_are_closed(
    upstream: FakeUpstream, make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Above the 60 s idle timeout of common load balancers, so they close first.
    assert server.KEEPALIVE_SECONDS > 60
    monkeypatch.setattr(server, "KEEPALIVE_SECONDS", 0.3)
    proxy = await start(make_proxy, upstream)

    silent_reader, silent = await connect(proxy)  # connects and never sends a byte
    half_reader, half = await connect(proxy)  # headers that never finish
    half.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n")
    idle_reader, idle = await connect(proxy)  # one request, then idle on keep-alive
    idle.write(request_head() + CHAT)
    assert (await read_answer(idle_reader)).status == 200

    for reader in (silent_reader, half_reader, idle_reader):
        assert await closed_within(reader, 3)
    for writer in (silent, half, idle):
        writer.close()


# -- header bytes that are not UTF-8 ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/gpt-test"),
        ("GET", "/v1/proxy/status"),
    ],
)
async def test_a_key_that_is_not_utf8_is_a_401(
    upstream: FakeUpstream, make_proxy: ProxyFactory, method: str, path: str
) -> None:
    proxy = await start(make_proxy, upstream)
    reader, writer = await connect(proxy)
    length = len(CHAT) if method == "POST" else None
    writer.write(request_head(path, method=method, length=length, auth=b"Bearer \xff\xfe"))
    if method == "POST":
        writer.write(CHAT)
    answer = await read_answer(reader)
    assert answer.status == 401
    assert answer.error()["code"] == "invalid_api_key"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    # The same connection still serves a good request: nothing broke on the way.
    writer.write(request_head() + CHAT)
    assert (await read_answer(reader)).status == 200
    writer.close()
    assert len(upstream.seen) == 1


async def test_an_x_api_key_that_is_not_utf8_is_a_401_and_counted(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await start(make_proxy, upstream)
    reader, writer = await connect(proxy)
    head = request_head(extra=b"x-api-key: k\xe9y\r\n").replace(
        b"Authorization: Bearer " + PROXY_KEY.encode() + b"\r\n", b""
    )
    writer.write(head + CHAT)
    answer = await read_answer(reader)
    writer.close()
    assert answer.status == 401
    scrape = Scrape(await proxy.metrics_text())
    labels = {"route": "chat_completions", "model": "other", "status": "401"}
    assert scrape.value("llmproxy_requests_total", **labels) == 1


# -- Expect: 100-continue ---------------------------------------------------------------


@pytest.mark.parametrize("expect", [b"100-continue", b"100-Continue"])
async def test_expect_100_continue_is_answered_before_the_body(
    upstream: FakeUpstream, make_proxy: ProxyFactory, expect: bytes
) -> None:
    proxy = await start(make_proxy, upstream)
    reader, writer = await connect(proxy)
    writer.write(request_head(extra=b"Expect: " + expect + b"\r\n"))
    async with asyncio.timeout(2):
        assert await reader.readuntil(b"\r\n\r\n") == CONTINUE
    writer.write(CHAT)
    answer = await read_answer(reader)
    assert answer.status == 200
    # Once per request: the next one on the connection gets its own, and only one.
    writer.write(request_head(extra=b"Expect: 100-continue\r\n"))
    async with asyncio.timeout(2):
        assert await reader.readuntil(b"\r\n\r\n") == CONTINUE
    writer.write(CHAT)
    assert (await read_answer(reader)).status == 200
    writer.close()
    assert [seen.body for seen in upstream.seen] == [CHAT, CHAT]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (request_head(length=2_000, extra=b"Expect: 100-continue\r\n"), 413),
        (request_head(auth=b"Bearer wrong", extra=b"Expect: 100-continue\r\n"), 401),
        (request_head(extra=b"Expect: 100-continue\r\nContent-Encoding: gzip\r\n"), 415),
    ],
    ids=["too-large", "wrong-key", "compressed"],
)
async def test_a_refused_request_gets_no_100_continue(
    upstream: FakeUpstream, make_proxy: ProxyFactory, head: bytes, status: int
) -> None:
    proxy = await start(make_proxy, upstream, max_body_bytes=1_000)
    reader, writer = await connect(proxy)
    writer.write(head)
    answer = await read_answer(reader)  # the first answer is the final one, no 100 before it
    writer.close()
    assert answer.status == status
    assert not upstream.seen


async def test_an_http10_request_gets_no_100_continue(
    upstream: FakeUpstream, make_proxy: ProxyFactory
) -> None:
    # RFC 9110 §10.1.1: an HTTP/1.0 request's 100-continue expectation is ignored.
    proxy = await start(make_proxy, upstream)
    reader, writer = await connect(proxy)
    writer.write(request_head(extra=b"Expect: 100-continue\r\n", version=b"HTTP/1.0"))
    await asyncio.sleep(0.2)
    writer.write(CHAT)
    answer = await read_answer(reader)
    writer.close()
    assert answer.status == 200
