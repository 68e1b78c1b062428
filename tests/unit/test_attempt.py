"""Tests for `proxy.attempt` without sockets: which §5 class a transport exception stands for."""

from __future__ import annotations

from typing import Any, cast

import aiohttp
import pytest

from proxy.attempt import failed_transport
from proxy.classify import Outcome


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        # Also a TimeoutError, but the provider was never reached: asked once more, like a refusal.
        (aiohttp.ConnectionTimeoutError("Connection timeout to host"), Outcome.CONNECT_ERROR),
        (aiohttp.SocketTimeoutError("Timeout on reading data from socket"), Outcome.TIMEOUT),
        (aiohttp.ServerTimeoutError("Timeout"), Outcome.TIMEOUT),
        (TimeoutError(), Outcome.TIMEOUT),
        (aiohttp.ServerDisconnectedError(), Outcome.CONNECT_ERROR),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), Outcome.CONNECT_ERROR),
        (ConnectionRefusedError(111, "Connection refused"), Outcome.CONNECT_ERROR),
        (aiohttp.ClientPayloadError("Response payload is not completed"), Outcome.CONNECT_ERROR),
        (aiohttp.ClientResponseError(cast(Any, None), ()), Outcome.BAD_RESPONSE),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.value,
)
def test_transport_failures_are_classed_by_type(exc: BaseException, outcome: Outcome) -> None:
    assert failed_transport(exc).verdict.outcome is outcome
