"""The events the request path reports, for metrics and logs to subscribe to.

The failover loop and the relay call these hooks; `proxy.metrics` implements them for
Prometheus. Keeping them behind a small protocol lets tests and the foundation run without a
registry, and keeps metric names out of the hot-path modules.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def attempt(self, tier: int, provider: str, outcome: str, ttfb: float | None) -> None: ...

    def fallback(self, from_tier: int, to_tier: int, reason: str) -> None: ...

    def tokens(self, tier: int, provider: str, prompt: int, completion: int) -> None: ...

    def interruption(self, tier: int, provider: str, reason: str) -> None: ...

    def malformed(self, tier: int, provider: str, count: int) -> None: ...

    def continuation(self, from_provider: str, to_provider: str, result: str) -> None: ...

    def client_disconnect(self, route: str) -> None: ...

    def request_done(
        self, route: str, model: str, status: int, tier: int | None, duration: float
    ) -> None: ...

    def config_reload(self, result: str) -> None: ...


class NullObserver:
    """Observes nothing: for tests and tools that run the request path without metrics."""

    def attempt(self, tier: int, provider: str, outcome: str, ttfb: float | None) -> None:
        pass

    def fallback(self, from_tier: int, to_tier: int, reason: str) -> None:
        pass

    def tokens(self, tier: int, provider: str, prompt: int, completion: int) -> None:
        pass

    def interruption(self, tier: int, provider: str, reason: str) -> None:
        pass

    def malformed(self, tier: int, provider: str, count: int) -> None:
        pass

    def continuation(self, from_provider: str, to_provider: str, result: str) -> None:
        pass

    def client_disconnect(self, route: str) -> None:
        pass

    def request_done(
        self, route: str, model: str, status: int, tier: int | None, duration: float
    ) -> None:
        pass

    def config_reload(self, result: str) -> None:
        pass
