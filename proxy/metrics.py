"""Prometheus metrics (SPEC §9): the request path's `Observer`, plus scrape-time key state.

Every metric lives in this object's own `CollectorRegistry` (tests make as many as they like).
Label values come from configuration, never from a client: the `model` label is a configured
public name or "other", `route` a fixed vocabulary, `status` an HTTP status code. The label sets
a configuration can produce are created when it is bound, so their series exist at zero and
`rate()` sees the first event. Key states, cooldowns and breakers are read from the live key
pool when scraped, not pushed.

The hot path pays one dict lookup per event: children of each metric are cached by their raw
label tuple, so `.labels()` (string conversion, validation, a lock) runs once per label set.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from aiohttp import web
from aiohttp.web import BaseRequest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from proxy.classify import Outcome
from proxy.errors import scrub
from proxy.gateway import Gateway
from proxy.settings import Continuation

if TYPE_CHECKING:
    from proxy.server import ProxyServer

# LLM latencies span a cached embedding (ms) to a long generation (minutes).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
)  # fmt: skip
ROUTE_LABELS = ("chat_completions", "completions", "embeddings", "responses", "models", "other")
# The routed APIs with a fixed path: route label -> API path after `/v1/`.
API_ROUTES = {
    "chat_completions": "chat/completions",
    "completions": "completions",
    "embeddings": "embeddings",
    "responses": "responses",
}
INTERRUPTION_REASONS = ("reset", "idle_timeout", "error_event", "truncated", "shutdown")
CONTINUATION_RESULTS = ("ok", "refused", "failed", "unavailable")
KEY_STATES = ("ready", "cooling", "disabled")
TOKEN_KINDS = ("prompt", "completion")
# A fallback's reason is the outcome of the failed attempt (or skip) that made the request
# leave its tier: never a success, and a client error ends the request instead.
FALLBACK_REASONS = tuple(o.value for o in Outcome if o not in (Outcome.OK, Outcome.CLIENT_ERROR))

M = TypeVar("M", Counter, Histogram)


def tier_label(tier: int | None) -> str:
    return "none" if tier is None else str(tier)


class _Children(Generic[M]):
    """A metric's children cached by raw label tuple (ints and None allowed).

    Every value that reaches a key is bounded by configuration or a fixed vocabulary, so the
    cache is bounded too.
    """

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._cache: dict[tuple[object, ...], M] = {}

    def get(self, key: tuple[object, ...]) -> M:
        child = self._cache.get(key)
        if child is None:
            child = self._metric.labels(*(_label(v) for v in key))
            self._cache[key] = child
        return child


def _label(value: object) -> str:
    if value is None:
        return "none"
    return value if isinstance(value, str) else str(value)


class _KeyStateCollector(Collector):
    """Reads key and breaker state from whichever gateway is live at scrape time."""

    def __init__(self, owner: Metrics) -> None:
        self._owner = owner

    def describe(self) -> Iterator[Metric]:
        # Lets the registry refuse a second metric under one of these names.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        keys, cooldown, breaker = self._families()
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

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "llmproxy_keys", "Upstream keys by state", labels=["provider", "state"]
            ),
            GaugeMetricFamily(
                "llmproxy_key_cooldown_seconds",
                "Seconds until the key is ready again (0 when ready)",
                labels=["provider", "key"],
            ),
            GaugeMetricFamily(
                "llmproxy_breaker_open",
                "1 while an endpoint breaker of the provider is open or half-open",
                labels=["provider"],
            ),
        )


class _WithoutCreated(Collector):
    """The registry as exposed: without the optional `_created` samples.

    prometheus_client adds one to every counter and histogram child; the text format shows
    them as extra `*_created` gauge families outside SPEC §9, and Prometheus stores them as
    series of their own, doubling what every counter costs. Neither format requires them.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            created = metric.name + "_created"
            if not any(s.name == created for s in metric.samples):
                yield metric
                continue
            trimmed = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            trimmed.samples = [s for s in metric.samples if s.name != created]
            yield trimmed


class Metrics:
    """All SPEC §9 metrics in one registry; implements `proxy.observer.Observer`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.gateway: Gateway | None = None
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
        self._exposed = _WithoutCreated(r)
        self._requests = _Children(self.requests)
        self._duration = _Children(self.duration)
        self._attempts = _Children(self.attempts)
        self._ttfb = _Children(self.ttfb)
        self._fallbacks = _Children(self.fallbacks)
        self._tokens = _Children(self.tokens_total)
        self._interruptions = _Children(self.interruptions)
        self._continuations = _Children(self.continuations)
        self._malformed = _Children(self.malformed_events)
        self._disconnects = _Children(self.disconnects)
        self._reloads = _Children(self.reloads)
        for route in ROUTE_LABELS:
            self._disconnects.get((route,))
        for result in ("ok", "error"):
            self._reloads.get((result,))

    # -- wiring --------------------------------------------------------------------------

    def bind(self, server: ProxyServer) -> None:
        self.inflight.set_function(lambda: float(server.inflight))
        server.metrics_handler = self.handle
        self.rebind(server.gateway)

    def rebind(self, gateway: Gateway) -> None:
        """Follow a new gateway and create its label sets so they exist at zero.

        Counters are never reset: series of providers or models that left the configuration
        keep their totals, as a Prometheus counter must.
        """
        self.gateway = gateway
        table = gateway.table
        providers = table.enabled
        for route, path in API_ROUTES.items():
            for model in table.public_models:
                if not table.plan(model, path).empty:
                    self._requests.get((route, model, 200))
            for tier in sorted({p.tier for p in providers if p.serves_path(path)}):
                self._duration.get((route, tier))
        for route in ROUTE_LABELS:
            self._requests.get((route, "other", 200))
        for provider in providers:
            tier, name = provider.tier, provider.name
            for outcome in Outcome:
                self._attempts.get((tier, name, outcome.value))
            self._ttfb.get((tier, name))
            for kind in TOKEN_KINDS:
                self._tokens.get((tier, name, kind))
            for reason in INTERRUPTION_REASONS:
                self._interruptions.get((tier, name, reason))
            self._malformed.get((tier, name))
            self._continuations.get((name, "none", "unavailable"))
            for other in providers:
                # Continuation goes to a later candidate that takes a prefill (SPEC §6).
                if (
                    other is not provider
                    and other.continuation is Continuation.PREFILL
                    and other.tier >= tier
                ):
                    for result in ("ok", "refused", "failed"):
                        self._continuations.get((name, other.name, result))
        tiers = sorted({p.tier for p in providers})
        for from_tier in tiers:
            for to_tier in tiers:
                if from_tier < to_tier:
                    for reason in FALLBACK_REASONS:
                        self._fallbacks.get((from_tier, to_tier, reason))

    def clock(self) -> float:
        return time.monotonic()

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition body and its content type (OpenMetrics when the scraper asks)."""
        encoder, content_type = choose_encoder(accept)
        body = encoder(self._exposed)
        if self.gateway is not None:
            # Key names come from the operator; one that repeats a key's value must not leak it.
            body = scrub(body, self.gateway.secrets)
        return body, content_type

    async def handle(self, request: BaseRequest, request_id: str) -> web.StreamResponse:
        body, content_type = self.render(request.headers.get("Accept", ""))
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    # -- Observer ------------------------------------------------------------------------

    def attempt(self, tier: int, provider: str, outcome: str, ttfb: float | None) -> None:
        self._attempts.get((tier, provider, outcome)).inc()
        if ttfb is not None:
            self._ttfb.get((tier, provider)).observe(ttfb)

    def fallback(self, from_tier: int, to_tier: int, reason: str) -> None:
        self._fallbacks.get((from_tier, to_tier, reason)).inc()

    def tokens(self, tier: int, provider: str, prompt: int, completion: int) -> None:
        # An upstream's usage is not trusted: a negative count would make `inc` raise.
        if prompt > 0:
            self._tokens.get((tier, provider, "prompt")).inc(prompt)
        if completion > 0:
            self._tokens.get((tier, provider, "completion")).inc(completion)

    def interruption(self, tier: int, provider: str, reason: str) -> None:
        self._interruptions.get((tier, provider, reason)).inc()

    def malformed(self, tier: int, provider: str, count: int) -> None:
        self._malformed.get((tier, provider)).inc(count)

    def continuation(self, from_provider: str, to_provider: str, result: str) -> None:
        self._continuations.get((from_provider, to_provider, result)).inc()

    def client_disconnect(self, route: str) -> None:
        self._disconnects.get((route,)).inc()

    def request_done(
        self, route: str, model: str, status: int, tier: int | None, duration: float
    ) -> None:
        self._requests.get((route, model, status)).inc()
        self._duration.get((route, tier)).observe(duration)

    def config_reload(self, result: str) -> None:
        self._reloads.get((result,)).inc()
