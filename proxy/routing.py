"""The compiled tier table: which providers may serve a model, in which order.

Pure: built once per configuration load from `Settings`, then asked `plan(model, path)` per
request. Plans are memoised per (model, path), so the per-request cost is one dict lookup;
the memo is bounded because model names come from clients.

Ordering (SPEC §3): candidates are grouped by tier, best (1) first. Inside a tier the declared
order is kept here; balanced rotation between providers of a tier depends on live load and is
applied by the failover loop. A pinned model (`provider/rest`) puts that provider first and
drops every tier better than its own: failover never climbs to a more expensive tier.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.settings import Endpoint, Provider, Settings

_PLAN_MEMO_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Candidate:
    """One provider that can serve the request, with the names it will be sent under."""

    provider: Provider
    endpoint: Endpoint
    upstream_model: str

    @property
    def tier(self) -> int:
        return self.provider.tier


@dataclass(frozen=True, slots=True)
class Plan:
    """Candidates for one model, grouped by tier in failover order.

    `disabled` names pinned or matching providers that exist but cannot serve, so the final
    error can say why; `pinned_unserved` is set when the pinned provider does not serve the
    model at all (a 404, SPEC §3).
    """

    model: str
    tiers: tuple[tuple[Candidate, ...], ...]
    disabled: tuple[str, ...] = ()
    pinned: str | None = None
    pinned_unserved: bool = False

    @property
    def empty(self) -> bool:
        return not self.tiers


class TierTable:
    """The routing table compiled from one `Settings`; immutable once built."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled: tuple[Provider, ...] = tuple(
            sorted((p for p in settings.providers if p.enabled), key=lambda p: p.tier)
        )
        self._by_name = {p.name: p for p in settings.providers}
        self._memo: dict[tuple[str, str], Plan] = {}
        names: dict[str, None] = {}
        for provider in self.enabled:
            if provider.models is not None:
                for public in provider.models.public_names():
                    names.setdefault(public, None)
        self.public_models: tuple[str, ...] = tuple(names)
        self._public_set = frozenset(self.public_models)

    def plan(self, model: str, path: str) -> Plan:
        """The candidates for `model` on API `path` (e.g. "chat/completions")."""
        memo_key = (model, path)
        plan = self._memo.get(memo_key)
        if plan is None:
            plan = self._compile(model, path)
            if len(self._memo) >= _PLAN_MEMO_LIMIT:
                self._memo.clear()
            self._memo[memo_key] = plan
        return plan

    def metric_model(self, model: str) -> str:
        """The `model` metric label: a configured public name, else "other" (bounded)."""
        return model if model in self._public_set else "other"

    def pinned_names(self) -> tuple[str, ...]:
        """`provider/model` names for every exact public model of every enabled provider."""
        out: list[str] = []
        for provider in self.enabled:
            if provider.models is not None:
                out.extend(f"{provider.name}/{m}" for m in provider.models.public_names())
        return tuple(out)

    def _compile(self, model: str, path: str) -> Plan:
        pinned: Provider | None = None
        name = model
        head, sep, rest = model.partition("/")
        if sep and head in self._by_name:
            pinned = self._by_name[head]
            name = rest

        disabled: list[str] = []
        first: Candidate | None = None
        if pinned is not None:
            if not pinned.enabled:
                disabled.append(f"{pinned.name}: disabled ({pinned.disabled_reason})")
            else:
                first = _candidate(pinned, name, path)
                if first is None:
                    return Plan(model, (), pinned=pinned.name, pinned_unserved=True)

        floor = pinned.tier if pinned is not None else 0
        grouped: dict[int, list[Candidate]] = {}
        if first is not None:
            grouped[first.tier] = [first]
        for provider in self.enabled:
            if provider.tier < floor or provider is pinned:
                continue
            candidate = _candidate(provider, name, path)
            if candidate is not None:
                grouped.setdefault(provider.tier, []).append(candidate)
        tiers = tuple(tuple(grouped[t]) for t in sorted(grouped))
        return Plan(
            model, tiers, tuple(disabled), pinned=pinned.name if pinned is not None else None
        )


def _candidate(provider: Provider, public: str, path: str) -> Candidate | None:
    if not provider.serves_path(path):
        return None
    upstream = provider.upstream_model(public)
    if upstream is None:
        return None
    endpoint = provider.endpoint_for(upstream)
    if endpoint is None:
        return None
    return Candidate(provider, endpoint, upstream)
