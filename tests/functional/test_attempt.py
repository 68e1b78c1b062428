"""One upstream attempt over a real socket: a connect that times out is a `connect_error`,
not a `timeout` (SPEC §5: the provider was never reached, so it is asked once more)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import orjson
import pytest

from proxy import attempt
from proxy.attempt import AttemptLimits, Failed
from proxy.classify import Outcome
from tests.fakes.upstream import FakeUpstream, Hang
from tests.harness import chat

HEADERS = {"Content-Type": "application/json"}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_connect_timeout_is_a_connect_error(upstream: FakeUpstream, stream: bool) -> None:
    # aiohttp's connect timeout covers waiting for a pooled connection: with a pool of one
    # held by a hung request, the next attempt cannot connect in time, every time.
    upstream.script(Hang())
    url = upstream.base_url + "/chat/completions"
    body = orjson.dumps(chat(stream=stream))
    limits = AttemptLimits(connect=0.2, first_byte=5.0, idle=5.0, deadline=time.monotonic() + 10.0)
    send = attempt.stream if stream else attempt.plain
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        hung = asyncio.create_task(send(session, url, body, dict(HEADERS), limits))
        while not upstream.seen:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        failed = await send(session, url, body, dict(HEADERS), limits)
        waited = time.monotonic() - started
        hung.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hung
    assert isinstance(failed, Failed)
    assert failed.verdict.outcome is Outcome.CONNECT_ERROR, failed.detail
    assert waited < 2.0  # the connect timeout ended it, not `first_byte`
    assert len(upstream.seen) == 1
