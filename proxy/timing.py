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
