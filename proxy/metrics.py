"""Prometheus metrics (SPEC §9): the request path's `Observer`, plus scrape-time key state.

Every metric lives in this object's own `CollectorRegistry` (tests make as many as they like).
Label values come from configuration, never from a client: the `model` label is a configured
public name or "other". Known label sets are created at start so their series exist at zero.
Key states, cooldowns and breakers are read from the live key pool when scraped, not pushed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.web import BaseRequest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from proxy.classify import Outcome
from proxy.gateway import Gateway

if TYPE_CHECKING:
    from proxy.server import ProxyServer

# LLM latencies span a cached embedding (ms) to a long generation (minutes).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
)  # fmt: skip
ROUTE_LABELS = ("chat_completions", "completions", "embeddings", "responses", "models", "other")
INTERRUPTION_REASONS = ("reset", "idle_timeout", "error_event", "truncated", "shutdown")
CONTINUATION_RESULTS = ("ok", "refused", "failed", "unavailable")
KEY_STATES = ("ready", "cooling", "disabled")


def tier_label(tier: int | None) -> str:
    return "none" if tier is None else str(tier)


class _KeyStateCollector(Collector):
    """Reads key and breaker state from whichever gateway is live at scrape time."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        keys = GaugeMetricFamily(
            "llmproxy_keys", "Upstream keys by state", labels=["provider", "state"]
        )
        cooldown = GaugeMetricFamily(
            "llmproxy_key_cooldown_seconds",
            "Seconds until the key is ready again (0 when ready)",
            labels=["provider", "key"],
        )
        breaker = GaugeMetricFamily(
            "llmproxy_breaker_open",
            "1 while an endpoint breaker of the provider is open or half-open",
            labels=["provider"],
        )
        gateway = self._owner.gateway
        if gateway is not None:
            now = self._owner.clock()
            counts: dict[tuple[str, str], int] = {}
            for provider in gateway.table.enabled:
                for state in KEY_STATES:
                    counts[(provider.name, state)] = 0
            for view in gateway.pool.key_views(now):
                counts[(view.provider, view.state)] = counts.get((view.provider, view.state), 0) + 1
                cooldown.add_metric([view.provider, view.key], round(view.cooldown_remaining, 3))
            for (provider_name, state), count in counts.items():
                keys.add_metric([provider_name, state], count)
            open_by_provider: dict[str, int] = {p.name: 0 for p in gateway.table.enabled}
            for breaker_view in gateway.pool.breaker_views(now):
                if breaker_view.state != "closed":
                    open_by_provider[breaker_view.provider] = 1
            for provider_name, is_open in open_by_provider.items():
                breaker.add_metric([provider_name], is_open)
        yield keys
        yield cooldown
        yield breaker


class Metrics:
    """All SPEC §9 metrics in one registry; implements `proxy.observer.Observer`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.gateway: Gateway | None = None
        self._server: ProxyServer | None = None
        r = self.registry
        self.requests = Counter(
            "llmproxy_requests", "Client requests", ["route", "model", "status"], registry=r
        )
        self.duration = Histogram(
            "llmproxy_request_duration_seconds",
            "Client request duration",
            ["route", "tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "llmproxy_upstream_attempts",
            "Upstream attempts by outcome",
            ["tier", "provider", "outcome"],
            registry=r,
        )
        self.ttfb = Histogram(
            "llmproxy_upstream_ttfb_seconds",
            "Time to the upstream's first byte (streams: first data event)",
            ["tier", "provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "llmproxy_fallbacks",
            "Moves from one tier to another",
            ["from_tier", "to_tier", "reason"],
            registry=r,
        )
        self.tokens_total = Counter(
            "llmproxy_tokens", "Tokens used", ["tier", "provider", "kind"], registry=r
        )
        self.inflight = Gauge("llmproxy_inflight_requests", "Requests in flight", registry=r)
        self.interruptions = Counter(
            "llmproxy_stream_interruptions",
            "Streams cut after their first data event",
            ["tier", "provider", "reason"],
            registry=r,
        )
        self.continuations = Counter(
            "llmproxy_stream_continuations",
            "Cut streams resumed on another provider",
            ["from_provider", "to_provider", "result"],
            registry=r,
        )
        self.malformed_events = Counter(
            "llmproxy_stream_malformed_events",
            "Stream events dropped for invalid JSON",
            ["tier", "provider"],
            registry=r,
        )
        self.disconnects = Counter(
            "llmproxy_client_disconnects",
            "Clients that went away mid-request",
            ["route"],
            registry=r,
        )
        self.reloads = Counter(
            "llmproxy_config_reloads", "Configuration reloads", ["result"], registry=r
        )
        r.register(_KeyStateCollector(self))
        for route in ROUTE_LABELS:
            self.disconnects.labels(route)
        for result in ("ok", "error"):
            self.reloads.labels(result)

    # -- wiring --------------------------------------------------------------------------

    def bind(self, server: ProxyServer) -> None:
        self._server = server
        self.inflight.set_function(lambda: float(server.inflight))
        server.metrics_handler = self.handle
        self.rebind(server.gateway)

    def rebind(self, gateway: Gateway) -> None:
        """Follow a new gateway; create its label sets so they exist at zero."""
        self.gateway = gateway
        for provider in gateway.table.enabled:
            tier, name = str(provider.tier), provider.name
            for outcome in Outcome:
                self.attempts.labels(tier, name, outcome.value)
            self.ttfb.labels(tier, name)
            for kind in ("prompt", "completion"):
                self.tokens_total.labels(tier, name, kind)
            for reason in INTERRUPTION_REASONS:
                self.interruptions.labels(tier, name, reason)
            self.malformed_events.labels(tier, name)

    def clock(self) -> float:
        return time.monotonic()

    async def handle(self, request: BaseRequest, request_id: str) -> web.StreamResponse:
        accept = request.headers.get("Accept", "")
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    # -- Observer ------------------------------------------------------------------------

    def attempt(self, tier: int, provider: str, outcome: str, ttfb: float | None) -> None:
        self.attempts.labels(str(tier), provider, outcome).inc()
        if ttfb is not None:
            self.ttfb.labels(str(tier), provider).observe(ttfb)

    def fallback(self, from_tier: int, to_tier: int, reason: str) -> None:
        self.fallbacks.labels(str(from_tier), str(to_tier), reason).inc()

    def tokens(self, tier: int, provider: str, prompt: int, completion: int) -> None:
        if prompt:
            self.tokens_total.labels(str(tier), provider, "prompt").inc(prompt)
        if completion:
            self.tokens_total.labels(str(tier), provider, "completion").inc(completion)

    def interruption(self, tier: int, provider: str, reason: str) -> None:
        self.interruptions.labels(str(tier), provider, reason).inc()

    def malformed(self, tier: int, provider: str, count: int) -> None:
        self.malformed_events.labels(str(tier), provider).inc(count)

    def continuation(self, from_provider: str, to_provider: str, result: str) -> None:
        self.continuations.labels(from_provider, to_provider, result).inc()

    def client_disconnect(self, route: str) -> None:
        self.disconnects.labels(route).inc()

    def request_done(
        self, route: str, model: str, status: int, tier: int | None, duration: float
    ) -> None:
        self.requests.labels(route, model, str(status)).inc()
        self.duration.labels(route, tier_label(tier)).observe(duration)

    def config_reload(self, result: str) -> None:
        self.reloads.labels(result).inc()
