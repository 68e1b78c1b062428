"""The circuit breaker of one endpoint (base URL), shared by every provider that uses it.

A failing endpoint is skipped instead of costing each request an attempt (and its first
byte timeout) until it is known to be back. The breaker opens after `breaker.failures`
consecutive provider failures, stays open for `open_seconds`, then lets exactly one probe
through at a time: its success closes the breaker, its failure re-opens it. Only provider
failures count; any other HTTP answer, a 4xx included, shows the endpoint is alive.

Pure, like `proxy.keypool`, which keeps one breaker per base URL (carried over on a
reload) and decides which attempt is the probe; time comes in as `now`.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.settings import BreakerSettings


@dataclass(frozen=True, slots=True)
class BreakerView:
    """One endpoint breaker's state, per provider that uses the endpoint."""

    provider: str
    base_url: str
    state: str  # "closed" | "open" | "half_open"
    open_remaining: float


@dataclass(slots=True)
class Breaker:
    """One endpoint's breaker; `KeyPool` decides which attempt is the probe."""

    failures: int = 0
    open_until: float | None = None  # None: closed
    probing: bool = False

    def state(self, now: float) -> str:
        """closed, open, or half_open: open, but the time is up and a probe may go through."""
        if self.open_until is None:
            return "closed"
        return "open" if now < self.open_until else "half_open"

    def judge(self, failed: bool, probe: bool, settings: BreakerSettings, now: float) -> None:
        """Count one finished attempt: `failed` if it was a provider failure."""
        if probe:
            if failed:
                self.failures += 1
                self.open_until = now + settings.open_seconds
            else:
                self.failures = 0
                self.open_until = None
        elif self.open_until is not None:
            return  # while not closed only the probe speaks: this attempt predates the opening
        elif not failed:
            self.failures = 0
        else:
            self.failures += 1
            # `failures: 0` turns the breaker off rather than opening it on every failure.
            if 0 < settings.failures <= self.failures:
                self.open_until = now + settings.open_seconds
