"""Deadlines on the monotonic clock.

The key pool, the failover loop and the relay all measure time with `time.monotonic()`, so
one absolute deadline means the same instant everywhere, whichever event loop runs (uvloop's
`loop.time()` need not share the stdlib clock's origin).
"""

from __future__ import annotations

import asyncio
import time


def timeout_at(deadline: float) -> asyncio.Timeout:
    """`asyncio.timeout` that expires at `deadline` on the `time.monotonic()` clock."""
    return asyncio.timeout(max(0.0, deadline - time.monotonic()))


def loop_time_at(deadline: float) -> float:
    """`deadline` on the `time.monotonic()` clock as a time of the running loop's clock
    (for `asyncio.Timeout.reschedule`)."""
    return asyncio.get_running_loop().time() + max(0.0, deadline - time.monotonic())


class ReadTimer:
    """Bounds each read of a long relay as a fresh `asyncio.timeout` per read would.

    A relay reads once per event, and a new timeout per read costs a timer handle made and
    cancelled each time (about a tenth of a paced stream's CPU). This keeps one handle and
    re-arms it only when it fires early: a read that ends in time moves no timer at all.
    Between reads (while writing to the client) it never fires.

    Use: `start(until)` before each read, `stop()` right after it; when the read raises
    `CancelledError`, `expired()` says whether that was this timer (and takes the
    cancellation back), as `asyncio.Timeout` turns its own cancellation into TimeoutError.
    `close()` at the end.
    """

    __slots__ = ("_armed_at", "_cancelling", "_expired", "_handle", "_loop", "_task", "_until")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "ReadTimer needs a task"
        self._task = task
        self._cancelling = task.cancelling()
        self._until: float | None = None  # loop time the pending read must end by
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._expired = False

    def start(self, deadline: float) -> None:
        """Bound the next read by `deadline` on the `time.monotonic()` clock."""
        until = self._loop.time() + max(0.0, deadline - time.monotonic())
        self._until = until
        if self._handle is None or self._armed_at > until:
            if self._handle is not None:
                self._handle.cancel()
            self._arm(until)

    def stop(self) -> None:
        self._until = None

    def expired(self) -> bool:
        """True when the `CancelledError` being handled came from this timer alone."""
        if not self._expired:
            return False
        self._expired = False
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        self._until = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, when: float) -> None:
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        until = self._until
        if until is None:
            return  # between reads: the next start() arms it again
        if self._loop.time() < until:
            self._arm(until)  # the read started after this was armed: wait for its own end
            return
        self._expired = True
        self._task.cancel()
