"""ReadTimer: a per-read deadline for long relays, without a timer handle per read."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.timing import ReadTimer


async def _read(timer: ReadTimer, deadline: float, waiter: asyncio.Future[bytes]) -> str:
    """One guarded read, as the relay does it: 'data', 'timeout' or a CancelledError."""
    timer.start(deadline)
    try:
        await waiter
    except asyncio.CancelledError:
        if not timer.expired():
            raise
        return "timeout"
    timer.stop()
    return "data"


async def test_a_read_past_its_deadline_times_out() -> None:
    timer = ReadTimer()
    never: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    assert await _read(timer, time.monotonic() + 0.02, never) == "timeout"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    timer.close()


async def test_reads_in_time_and_slow_writes_between_them_never_time_out() -> None:
    timer = ReadTimer()
    loop = asyncio.get_running_loop()
    for _ in range(3):
        ready: asyncio.Future[bytes] = loop.create_future()
        loop.call_later(0.005, ready.set_result, b"x")
        assert await _read(timer, time.monotonic() + 0.05, ready) == "data"
        await asyncio.sleep(0.08)  # a client write slower than the read deadline
    timer.close()


async def test_a_later_read_is_bounded_by_its_own_deadline() -> None:
    timer = ReadTimer()
    loop = asyncio.get_running_loop()
    quick: asyncio.Future[bytes] = loop.create_future()
    quick.set_result(b"x")
    assert await _read(timer, time.monotonic() + 0.03, quick) == "data"
    await asyncio.sleep(0.02)
    # The timer armed for the first read fires during this one, which still has time left.
    slow: asyncio.Future[bytes] = loop.create_future()
    loop.call_later(0.03, slow.set_result, b"y")
    assert await _read(timer, time.monotonic() + 0.2, slow) == "data"
    timer.close()


async def test_an_earlier_deadline_rearms_the_timer() -> None:
    timer = ReadTimer()
    loop = asyncio.get_running_loop()
    quick: asyncio.Future[bytes] = loop.create_future()
    quick.set_result(b"x")
    assert await _read(timer, time.monotonic() + 60, quick) == "data"
    never: asyncio.Future[bytes] = loop.create_future()
    assert await _read(timer, time.monotonic() + 0.02, never) == "timeout"
    timer.close()


async def test_a_cancel_from_elsewhere_is_not_taken_for_a_timeout() -> None:
    timer = ReadTimer()
    task = asyncio.current_task()
    assert task is not None
    never: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await _read(timer, time.monotonic() + 60, never)
    task.uncancel()
    timer.close()
