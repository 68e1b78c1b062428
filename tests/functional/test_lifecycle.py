"""Shutdown of a real proxy process (SPEC §10): SIGTERM/SIGINT drain while still serving,
the end of the grace period, a second signal. See `tests/procs.py` for how it runs.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.upstream import FakeUpstream, Hang, Stream
from tests.fakes.upstream import chat_stream_events as stream_events
from tests.harness import PROXY_KEY, chat
from tests.procs import (  # noqa: F401 - the fixtures
    AUTH,
    ask,
    client_fixture,
    config_doc,
    data_lines,
    readyz,
    spawn_fixture,
    write_config,
)

pytestmark = pytest.mark.slow


# --- SIGTERM / SIGINT ----------------------------------------------------------------------


async def test_sigterm_lets_a_slow_stream_finish_while_still_serving(
    tmp_path: Path, upstream: FakeUpstream, spawn: Any, client: aiohttp.ClientSession
) -> None:
    parts = ["one", "two", "three", "four"]
    upstream.script(Stream(events=stream_events("gpt-test", parts), delay=0.25))
    proxy = await spawn(write_config(tmp_path / "providers.yaml", config_doc({"a": upstream})))
    assert await readyz(client, proxy) == 200

    async with client.post(
        proxy.url + "/v1/chat/completions", json=chat(stream=True), headers=AUTH
    ) as streaming:
        events = data_lines(streaming)
        received = [await anext(events)]  # the stream is under way
        proxy.send(signal.SIGTERM)
        await proxy.wait_log(lambda line: line.get("msg") == "draining")

        assert await readyz(client, proxy) == 503
        # Kubernetes still routes here for a moment: a new request is served, not refused.
        served = await ask(client, proxy)
        assert served.status == 200
        assert served.headers["x-proxy-provider"] == "a"
        # No keep-alive while draining: the next request will not hit a closing connection.
        assert served.headers["Connection"].lower() == "close"

        received += [event async for event in events]

    assert received[-1] == b"[DONE]"
    assert len(received) == len(parts) + 3  # role chunk, parts, finish chunk, [DONE]
    assert await proxy.wait_exit() == 0
    assert not [line for line in proxy.logs if line.get("msg", "").startswith("grace period")]
    assert proxy.logs[-1]["msg"] == "stopped"


async def test_sigterm_past_the_grace_ends_open_requests_and_exits_zero(
    tmp_path: Path, upstream: FakeUpstream, spawn: Any, client: aiohttp.ClientSession
) -> None:
    # The first event at once, the next long after the grace period.
    upstream.script(Stream(events=stream_events("gpt-test", ["one", "two"]), delay=60))
    proxy = await spawn(
        write_config(tmp_path / "providers.yaml", config_doc({"a": upstream}, grace=0.5))
    )
    async with client.post(
        proxy.url + "/v1/chat/completions", json=chat(stream=True), headers=AUTH
    ) as streaming:
        events = data_lines(streaming)
        received = [await anext(events)]
        upstream.script(Hang())  # a plain request that is still waiting for its upstream
        plain = asyncio.create_task(ask(client, proxy))
        assert await upstream.wait_seen(2)
        proxy.send(signal.SIGTERM)
        received += [event async for event in events]
        cut = await plain

    assert b"[DONE]" not in received
    assert json.loads(received[-1])["error"]["code"] == "shutdown"
    assert len(received) == 2
    # A request that had nothing to show yet is answered, not dropped.
    assert cut.status == 503
    assert await proxy.wait_exit() == 0
    assert await upstream.wait_disconnected(0) and await upstream.wait_disconnected(1)
    assert [line for line in proxy.logs if line.get("msg", "").startswith("grace period")]
    interrupted = [line for line in proxy.logs if line.get("interrupted") == "shutdown"]
    assert len(interrupted) == 2


async def test_a_finished_stream_still_open_at_the_end_of_the_grace_ends_with_done(
    tmp_path: Path, upstream: FakeUpstream, spawn: Any, client: aiohttp.ClientSession
) -> None:
    # Every finish reason is out; the upstream sends no [DONE] and stays open, so the proxy
    # lingers (up to 1 s) for its end. The grace ends meanwhile: the answer is whole, and
    # must end as one, not with a shutdown error after the finish chunk.
    events = stream_events("gpt-test", ["one", "two"])
    upstream.script(Stream(events=events, done=False, end="hang"))
    proxy = await spawn(
        write_config(tmp_path / "providers.yaml", config_doc({"a": upstream}, grace=0.2))
    )
    async with client.post(
        proxy.url + "/v1/chat/completions", json=chat(stream=True), headers=AUTH
    ) as streaming:
        lines = data_lines(streaming)
        received = [await anext(lines) for _ in events]  # the finish chunk included
        assert json.loads(received[-1])["choices"][0]["finish_reason"] == "stop"
        proxy.send(signal.SIGTERM)
        received += [line async for line in lines]

    assert received[len(events) :] == [b"[DONE]"]
    assert await proxy.wait_exit() == 0
    assert [line for line in proxy.logs if line.get("msg", "").startswith("grace period")]
    assert not [line for line in proxy.logs if line.get("interrupted") == "shutdown"]


async def test_plain_request_cut_at_shutdown_gets_an_openai_shaped_503(
    tmp_path: Path, upstream: FakeUpstream, spawn: Any, client: aiohttp.ClientSession
) -> None:
    upstream.script(Hang())
    proxy = await spawn(
        write_config(tmp_path / "providers.yaml", config_doc({"a": upstream}, grace=0.2))
    )

    async def post() -> tuple[int, Mapping[str, str], Any]:
        url = proxy.url + "/v1/chat/completions"
        async with client.post(url, json=chat(), headers=AUTH) as response:
            return response.status, response.headers, await response.json()

    cut = asyncio.create_task(post())
    assert await upstream.wait_seen(1)  # in flight once the upstream has it
    proxy.send(signal.SIGTERM)
    status, headers, body = await cut

    assert status == 503
    assert body["error"]["code"] == "shutdown" and body["error"]["type"] == "api_error"
    assert headers["Connection"].lower() == "close"
    assert headers["x-request-id"]
    assert await proxy.wait_exit() == 0


async def test_request_still_uploading_at_sigterm_is_served_before_exit(
    tmp_path: Path, upstream: FakeUpstream, spawn: Any
) -> None:
    proxy = await spawn(write_config(tmp_path / "providers.yaml", config_doc({"a": upstream})))
    body = json.dumps(chat()).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n"
        f"Authorization: Bearer {PROXY_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body[:10])
    await writer.drain()
    # Nothing is routed yet, so the proxy counts nothing in flight: it must still wait.
    proxy.send(signal.SIGTERM)
    await proxy.wait_log(lambda line: line.get("msg") == "draining")
    writer.write(body[10:])
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 200"), proxy.stderr
    assert await proxy.wait_exit() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_when_idle_exits_zero_at_once(
    tmp_path: Path, upstream: FakeUpstream, spawn: Any, sig: signal.Signals
) -> None:
    # A long grace: exiting well within the wait below shows the proxy did not sit it out.
    proxy = await spawn(
        write_config(tmp_path / "providers.yaml", config_doc({"a": upstream}, grace=60))
    )
    proxy.send(sig)
    assert await proxy.wait_exit(timeout=10) == 0
    assert [line["signal"] for line in proxy.logs if line.get("msg") == "draining"] == [sig.name]


async def test_second_signal_ends_the_grace_at_once(
    tmp_path: Path, upstream: FakeUpstream, spawn: Any, client: aiohttp.ClientSession
) -> None:
    upstream.script(Stream(events=stream_events("gpt-test", ["one"]), delay=60))
    proxy = await spawn(
        write_config(tmp_path / "providers.yaml", config_doc({"a": upstream}, grace=60))
    )
    async with client.post(
        proxy.url + "/v1/chat/completions", json=chat(stream=True), headers=AUTH
    ) as streaming:
        events = data_lines(streaming)
        received = [await anext(events)]
        proxy.send(signal.SIGINT)
        await proxy.wait_log(lambda line: line.get("msg") == "draining")
        proxy.send(signal.SIGINT)
        received += [event async for event in events]
    assert json.loads(received[-1])["error"]["code"] == "shutdown"
    assert await proxy.wait_exit(timeout=10) == 0
