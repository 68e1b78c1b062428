"""`GET /v1/proxy/status`: the live routing state as JSON, for an operator's eyes.

Per tier, in failover order, every configured provider (enabled or disabled, with the reason),
its endpoints with their breaker state, and every key by its name with its state, remaining
cooldown, requests in flight and usage counters. Key values never appear: the pool's views
carry names only, and the rendered body is scrubbed of every configured key value besides, in
case an operator named a key after its own value.

Pure: built from a `Gateway` and a monotonic `now`; the server adds auth and the HTTP answer.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.breaker import BreakerView
from proxy.errors import scrub
from proxy.gateway import Gateway
from proxy.keypool import KeyView
from proxy.settings import Provider

KEY_STATES = ("ready", "cooling", "disabled")


def _seconds(value: float) -> float:
    return round(max(0.0, value), 3)


def _key(view: KeyView) -> dict[str, Any]:
    return {
        "name": view.key,
        "state": view.state,
        "cooldown_remaining_seconds": _seconds(view.cooldown_remaining),
        "in_flight": view.in_flight,
        "consecutive_failures": view.consecutive_failures,
        "requests": view.requests,
        "prompt_tokens": view.prompt_tokens,
        "completion_tokens": view.completion_tokens,
    }


def _endpoints(provider: Provider, breakers: dict[str, BreakerView]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for endpoint in provider.endpoints:
        entry: dict[str, Any] = {
            "base_url": endpoint.base_url or None,
            "enabled": endpoint.disabled_reason is None,
        }
        if endpoint.disabled_reason is not None:
            entry["reason"] = endpoint.disabled_reason
        elif provider.enabled:
            view = breakers.get(endpoint.base_url)
            entry["breaker"] = view.state if view is not None else "closed"
            entry["breaker_open_remaining_seconds"] = (
                _seconds(view.open_remaining) if view is not None else 0.0
            )
        out.append(entry)
    return out


def _provider(
    provider: Provider,
    keys: list[KeyView],
    breakers: dict[str, BreakerView],
) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": provider.name, "enabled": provider.enabled}
    if provider.enabled:
        # A disabled provider may have no key only because its variables are unset.
        entry["keyless"] = provider.keyless
    else:
        entry["reason"] = provider.disabled_reason
    entry["rotation"] = provider.rotation.value
    entry["weight"] = provider.weight
    entry["endpoints"] = _endpoints(provider, breakers)
    counts = dict.fromkeys(KEY_STATES, 0)
    for view in keys:
        counts[view.state] = counts.get(view.state, 0) + 1
    entry["keys_by_state"] = counts
    entry["keys"] = [_key(view) for view in keys]
    return entry


def status_document(
    gateway: Gateway, now: float, *, draining: bool = False, inflight: int = 0
) -> dict[str, Any]:
    """The status of `gateway` at monotonic time `now`, as a JSON-ready dict."""
    keys_by_provider: dict[str, list[KeyView]] = {}
    for view in gateway.pool.key_views(now):
        keys_by_provider.setdefault(view.provider, []).append(view)
    breakers: dict[str, dict[str, BreakerView]] = {}
    for breaker in gateway.pool.breaker_views(now):
        breakers.setdefault(breaker.provider, {})[breaker.base_url] = breaker
    tiers: dict[int, list[dict[str, Any]]] = {}
    # Declaration order inside a tier: the order of sequential rotation.
    for provider in gateway.settings.providers:
        tiers.setdefault(provider.tier, []).append(
            _provider(
                provider,
                keys_by_provider.get(provider.name, []) if provider.enabled else [],
                breakers.get(provider.name, {}),
            )
        )
    return {
        "ready": gateway.ready and not draining,
        "draining": draining,
        "inflight_requests": inflight,
        "config": gateway.settings.source or None,
        "public_models": list(gateway.table.public_models),
        "tiers": [{"tier": tier, "providers": tiers[tier]} for tier in sorted(tiers)],
    }


def render_status(
    gateway: Gateway, now: float, *, draining: bool = False, inflight: int = 0
) -> bytes:
    """`status_document` as a JSON body, scrubbed of every key value."""
    body = orjson.dumps(
        status_document(gateway, now, draining=draining, inflight=inflight),
        option=orjson.OPT_INDENT_2,
    )
    return scrub(body, gateway.secrets)
