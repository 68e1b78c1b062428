"""The client side of a streamed answer.

`SSEResponse` is aiohttp-sse's `EventSourceResponse` (event-stream headers, no buffering, no
compression, a TCP user timeout against stalled clients) with one change: its heartbeat is a
`: keepalive` comment sent only after a quiet interval, instead of a `: ping` on a fixed beat,
so a busy stream carries no extra bytes.

`ClientStream` prepares that response lazily: normally when the first data event is ready (so
the routing headers can be set), or earlier, headers only, if the upstreams stay silent for
`sse_keepalive_seconds` while the failover loop is still trying (SPEC §6).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from aiohttp.web import BaseRequest
from aiohttp_sse import EventSourceResponse

from proxy.sse import encode_comment

_KEEPALIVE = encode_comment("keepalive")


class SSEResponse(EventSourceResponse):
    """An event-stream response whose heartbeat only fills silences."""

    def __init__(self, headers: Mapping[str, str], keepalive: float) -> None:
        super().__init__(headers=headers, sep="\n", allow_all_methods=True, ping_interval=keepalive)
        self._keepalive = keepalive
        self._last_write = 0.0
        # The answer's final `[DONE]` is written: nothing may follow it (a shutdown included).
        self.done_written = False

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._last_write = asyncio.get_running_loop().time()
        await super().write(data)

    async def _ping(self) -> None:
        # Overrides aiohttp-sse's fixed-beat ping (the one private hook it offers for this).
        loop = asyncio.get_running_loop()
        self._last_write = loop.time()
        while True:
            quiet_until = self._last_write + self._keepalive
            delay = quiet_until - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            try:
                await self.write(_KEEPALIVE)
            except (ConnectionResetError, RuntimeError):
                return


class ClientStream:
    """Owns the client's SSE response: prepared once, early if upstreams stay silent."""

    def __init__(self, request: BaseRequest, base_headers: Mapping[str, str], keepalive: float):
        self._request = request
        self._headers = dict(base_headers)
        self._keepalive = keepalive
        self.response: SSEResponse | None = None
        self._prepare_task: asyncio.Task[None] | None = None
        self._early: asyncio.TimerHandle | None = None

    @property
    def prepared(self) -> bool:
        return self.response is not None and self.response.prepared

    def arm_keepalive(self) -> None:
        """Start the clock: headers and keepalives go out if nothing is ready in time."""
        if self._early is None and self._prepare_task is None:
            loop = asyncio.get_running_loop()
            self._early = loop.call_later(self._keepalive, self._prepare_early)

    def _prepare_early(self) -> None:
        """The keepalive timer fired before any answer: send headers and a keepalive now."""
        if self._prepare_task is None:
            response = SSEResponse(self._headers, self._keepalive)
            self.response = response
            self._prepare_task = asyncio.ensure_future(self._prepare(response))

    async def _prepare(self, response: SSEResponse) -> None:
        await response.prepare(self._request)
        # Headers went out with nothing behind them: tell the client we are alive now.
        await response.write(_KEEPALIVE)

    async def commit(self, extra_headers: Mapping[str, str]) -> SSEResponse:
        """Prepare the response (with routing headers unless already sent) and return it."""
        if self._early is not None:
            self._early.cancel()
            self._early = None
        if self._prepare_task is None:
            self._headers.update(extra_headers)
            # Nothing went out yet: prepare right here. A task of its own would cost its
            # creation and a loop iteration before the first byte, on every stream.
            response = SSEResponse(self._headers, self._keepalive)
            self.response = response
            await response.prepare(self._request)
            return response
        assert self.response is not None
        await self._prepare_task
        return self.response

    async def close(self) -> None:
        """Stop the timer and heartbeat; finish the body if it was started."""
        if self._early is not None:
            self._early.cancel()
            self._early = None
        task = self._prepare_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await task
        response = self.response
        if response is not None and response.prepared:
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                response.stop_streaming()
            with contextlib.suppress(ConnectionResetError, RuntimeError, OSError):
                await response.write_eof()
