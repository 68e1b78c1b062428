"""The key pool: which key serves the next attempt, and what each answer does to it.

State is kept per (provider name, key fingerprint) and a circuit breaker (`proxy.breaker`)
per endpoint base URL (SPEC §4). Pure: no I/O, and the clock is never read; every method
that needs time takes `now` in monotonic seconds.

A key is usable for an upstream model when it is neither disabled (auth or forbidden)
nor cooling as a whole (quota), nor cooling for that model (rate limit), and is below
`max_concurrent_per_key`.

On a reload the new pool adopts the old pool's state objects for keys and endpoints that
still exist, so leases handed out by the old pool release into the same state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from proxy.breaker import Breaker, BreakerView
from proxy.classify import KEY_FAILURES, PROVIDER_FAILURES, Outcome, Verdict
from proxy.settings import Cooldown, Endpoint, Key, Provider, Rotation
from proxy.waithint import MAX_COOLDOWN

KEYLESS = "keyless"
"""The key name of a provider that sends no credential."""

_NEVER = -math.inf
# Rate limits are kept per upstream model, and a glob-served provider forwards whatever
# model name a client sends: bound what one key remembers.
_MAX_MODEL_COOLDOWNS = 1024
# 2**64 times any sane `initial` is far beyond any `max`; keeps the power finite.
_MAX_BACKOFF_EXPONENT = 64


class Skip(StrEnum):
    """Why no lease could be had."""

    RATE_LIMITED = "rate_limited"
    DISABLED = "disabled"
    BREAKER_OPEN = "breaker_open"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Refusal:
    """No key now. `ready_at` is the earliest `now` at which acquire could succeed,
    or None when that is unknown (busy keys, a probe in flight, nothing cooling)."""

    skip: Skip
    ready_at: float | None


@dataclass(frozen=True, slots=True)
class KeyView:
    """One key's state for status pages and metrics; names only, never a value."""

    provider: str
    key: str
    state: str  # "ready" | "cooling" | "disabled"
    cooldown_remaining: float
    in_flight: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    consecutive_failures: int


@dataclass(slots=True)
class _KeyState:
    in_flight: int = 0
    last_used: float = _NEVER
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    consecutive_failures: int = 0
    disabled_until: float = _NEVER  # auth error or forbidden
    quota_until: float = _NEVER  # quota spent: the whole key rests
    model_until: dict[str, float] = field(default_factory=dict)  # rate limits

    def prune(self, now: float) -> None:
        expired = [model for model, until in self.model_until.items() if until <= now]
        for model in expired:
            del self.model_until[model]

    def blocked_until(self, upstream_model: str) -> float:
        """When this key can next serve `upstream_model` (ignoring concurrency)."""
        return max(
            self.disabled_until,
            self.quota_until,
            self.model_until.get(upstream_model, _NEVER),
        )

    def cool_model(self, upstream_model: str, until: float, now: float) -> None:
        if until <= now or until <= self.model_until.get(upstream_model, _NEVER):
            return
        self.prune(now)
        self.model_until[upstream_model] = until
        if len(self.model_until) > _MAX_MODEL_COOLDOWNS:
            soonest = min(self.model_until, key=self.model_until.__getitem__)
            del self.model_until[soonest]

    def view_state(self, now: float) -> tuple[str, float]:
        latest = max(self.quota_until, max(self.model_until.values(), default=_NEVER))
        if self.disabled_until > now:
            return "disabled", max(self.disabled_until, latest) - now
        if latest > now:
            return "cooling", latest - now
        return "ready", 0.0


@dataclass(frozen=True, slots=True)
class _Slot:
    key: Key | None
    name: str
    state: _KeyState


@dataclass(frozen=True, slots=True)
class _Entry:
    provider: Provider
    slots: tuple[_Slot, ...]


@dataclass(eq=False, slots=True)
class Lease:
    """One key (or the keyless pseudo-key) held for one attempt; hand it to `release`."""

    provider: str
    key: Key | None
    key_name: str
    endpoint: Endpoint
    upstream_model: str
    probe: bool
    provider_settings: Provider = field(repr=False)
    _state: _KeyState = field(repr=False)
    _breaker: Breaker = field(repr=False)
    _released: bool = field(default=False, repr=False)


class KeyPool:
    """Key and breaker state for every enabled provider of one configuration."""

    def __init__(self, providers: Sequence[Provider], previous: KeyPool | None = None) -> None:
        old_states = {} if previous is None else previous._states
        old_breakers = {} if previous is None else previous._breakers
        self._states: dict[tuple[str, str, int], _KeyState] = {}
        self._breakers: dict[str, Breaker] = {}
        self._entries: dict[str, _Entry] = {}
        for provider in providers:
            if not provider.enabled:
                continue
            slots = []
            for identity, key, name in _identities(provider):
                state = old_states.get(identity)
                if state is None:
                    state = _KeyState()
                self._states[identity] = state
                slots.append(_Slot(key, name, state))
            self._entries[provider.name] = _Entry(provider, tuple(slots))
            for endpoint in provider.endpoints:
                if endpoint.disabled_reason is None and endpoint.base_url not in self._breakers:
                    breaker = old_breakers.get(endpoint.base_url)
                    self._breakers[endpoint.base_url] = breaker or Breaker()

    def acquire(
        self,
        provider: Provider,
        endpoint: Endpoint,
        upstream_model: str,
        now: float,
        exclude: frozenset[str] = frozenset(),
    ) -> Lease | Refusal:
        """Lease a key of `provider` for one attempt at `endpoint`, or say why not.

        `exclude` names keys this request already used and must not use again.
        """
        entry = self._entries.get(provider.name)
        if entry is None:
            return Refusal(Skip.DISABLED, None)
        breaker = self._breakers.setdefault(endpoint.base_url, Breaker())
        probe = False
        if breaker.open_until is not None:
            if now < breaker.open_until:
                return Refusal(Skip.BREAKER_OPEN, breaker.open_until)
            if breaker.probing:
                return Refusal(Skip.BREAKER_OPEN, None)
            probe = True
        picked = _pick(entry, upstream_model, now, exclude)
        if isinstance(picked, Refusal):
            return picked
        picked.state.in_flight += 1
        picked.state.last_used = now
        picked.state.requests += 1
        if probe:
            breaker.probing = True
        return Lease(
            provider=entry.provider.name,
            key=picked.key,
            key_name=picked.name,
            endpoint=endpoint,
            upstream_model=upstream_model,
            probe=probe,
            provider_settings=entry.provider,
            _state=picked.state,
            _breaker=breaker,
        )

    def release(self, lease: Lease, verdict: Verdict | None, now: float) -> None:
        """Give the key back and apply what the attempt's verdict says (SPEC §4, §5).

        `verdict` None means the attempt was cancelled: only the slot is freed.
        Releasing the same lease again does nothing.
        """
        if lease._released:
            return
        lease._released = True
        state = lease._state
        state.in_flight = max(0, state.in_flight - 1)
        if lease.probe:
            lease._breaker.probing = False
        if verdict is None:
            return
        settings = lease.provider_settings
        _penalise(state, lease.upstream_model, verdict, settings.cooldown, now)
        # Any HTTP answer that is no provider failure shows the endpoint is alive.
        failed = verdict.outcome in PROVIDER_FAILURES
        lease._breaker.judge(failed, lease.probe, settings.breaker, now)

    def record_usage(self, lease: Lease, prompt_tokens: int, completion_tokens: int) -> None:
        """Add one answer's token usage to the lease's key."""
        lease._state.prompt_tokens += max(0, prompt_tokens)
        lease._state.completion_tokens += max(0, completion_tokens)

    def provider_load(self, provider: Provider) -> tuple[float, float]:
        """(in-flight over all keys / weight, most recent use): orders a tier's providers."""
        entry = self._entries.get(provider.name)
        if entry is None:
            return 0.0, _NEVER
        in_flight = sum(slot.state.in_flight for slot in entry.slots)
        last_used = max((slot.state.last_used for slot in entry.slots), default=_NEVER)
        weight = entry.provider.weight
        load = in_flight / weight if weight > 0 else math.inf
        return load, last_used

    def earliest_ready(self, provider: Provider, upstream_model: str, now: float) -> float | None:
        """The earliest `now` at which some key of `provider` could serve `upstream_model`
        (`now` itself when one is ready), also waiting out an open breaker; None for an
        unknown or disabled provider. Concurrency caps are not considered."""
        entry = self._entries.get(provider.name)
        if entry is None or not entry.slots:
            return None
        ready = min(max(now, slot.state.blocked_until(upstream_model)) for slot in entry.slots)
        endpoint = entry.provider.endpoint_for(upstream_model)
        breaker = None if endpoint is None else self._breakers.get(endpoint.base_url)
        if breaker is not None and breaker.open_until is not None:
            ready = max(ready, breaker.open_until)
        return ready

    def key_views(self, now: float) -> list[KeyView]:
        """Every key of every enabled provider, in declared order."""
        views = []
        for entry in self._entries.values():
            for slot in entry.slots:
                state = slot.state
                state.prune(now)
                label, remaining = state.view_state(now)
                views.append(
                    KeyView(
                        provider=entry.provider.name,
                        key=slot.name,
                        state=label,
                        cooldown_remaining=remaining,
                        in_flight=state.in_flight,
                        requests=state.requests,
                        prompt_tokens=state.prompt_tokens,
                        completion_tokens=state.completion_tokens,
                        consecutive_failures=state.consecutive_failures,
                    )
                )
        return views

    def breaker_views(self, now: float) -> list[BreakerView]:
        """Every enabled endpoint's breaker, once per provider that uses it."""
        views = []
        for entry in self._entries.values():
            seen: set[str] = set()
            for endpoint in entry.provider.endpoints:
                url = endpoint.base_url
                breaker = self._breakers.get(url)
                if breaker is None or url in seen:
                    continue
                seen.add(url)
                label = breaker.state(now)
                remaining = 0.0
                if label == "open" and breaker.open_until is not None:
                    remaining = breaker.open_until - now
                views.append(BreakerView(entry.provider.name, url, label, remaining))
        return views


def _identities(provider: Provider) -> list[tuple[tuple[str, str, int], Key | None, str]]:
    """(identity, key, name) per key; identity survives reloads and renames."""
    if provider.keyless:
        return [((provider.name, "", 0), None, KEYLESS)]
    seen: dict[str, int] = {}
    out: list[tuple[tuple[str, str, int], Key | None, str]] = []
    for key in provider.keys:
        fingerprint = key.secret.fingerprint
        # The same value listed twice stays two keys, each with its own state.
        repeat = seen.get(fingerprint, 0)
        seen[fingerprint] = repeat + 1
        out.append(((provider.name, fingerprint, repeat), key, key.name))
    return out


def _pick(
    entry: _Entry, upstream_model: str, now: float, exclude: frozenset[str]
) -> _Slot | Refusal:
    """The key to lease under the provider's rotation, or the refusal that explains why none."""
    cap = entry.provider.max_concurrent_per_key
    ready: list[tuple[int, float, int, _Slot]] = []
    busy = rate_limited = disabled = False
    cooling_ends: list[float] = []
    disabled_ends: list[float] = []
    for index, slot in enumerate(entry.slots):
        state = slot.state
        state.prune(now)
        until = state.blocked_until(upstream_model)
        is_disabled = state.disabled_until > now
        if slot.name in exclude:
            # Already failed this request with a key failure: it explains the refusal,
            # but its cooldown end is no time worth waiting for.
            disabled = disabled or is_disabled
            rate_limited = rate_limited or not is_disabled
        elif is_disabled:
            disabled = True
            disabled_ends.append(until)
        elif until > now:
            rate_limited = True
            cooling_ends.append(until)
        elif 0 < cap <= state.in_flight:
            busy = True
        else:
            ready.append((state.in_flight, state.last_used, index, slot))
    if ready:
        if entry.provider.rotation is Rotation.SEQUENTIAL:
            return ready[0][3]
        return min(ready, key=lambda r: r[:3])[3]
    if busy:
        return Refusal(Skip.BUSY, None)
    if rate_limited:
        return Refusal(Skip.RATE_LIMITED, min(cooling_ends, default=None))
    if disabled:
        return Refusal(Skip.DISABLED, min(disabled_ends, default=None))
    return Refusal(Skip.DISABLED, None)  # a provider with no key at all


def _penalise(
    state: _KeyState, upstream_model: str, verdict: Verdict, cooldown: Cooldown, now: float
) -> None:
    outcome = verdict.outcome
    if outcome is Outcome.OK:
        state.consecutive_failures = 0
    elif outcome in KEY_FAILURES:
        state.consecutive_failures += 1
    if outcome is Outcome.RATE_LIMITED:
        if verdict.quota_exhausted:
            rest = max(cooldown.max, verdict.retry_after or 0.0)
            state.quota_until = max(state.quota_until, now + _bounded(rest))
        else:
            rest = _backoff(cooldown, state.consecutive_failures)
            # A hint of zero (`Retry-After: 0`, a date already past) would let the key be
            # asked again at once, in a loop: the backoff is the least a 429 costs.
            if verdict.retry_after is not None and verdict.retry_after > 0:
                rest = verdict.retry_after
            state.cool_model(upstream_model, now + _bounded(rest), now)
    elif outcome is Outcome.AUTH_ERROR:
        state.disabled_until = max(state.disabled_until, now + _bounded(cooldown.auth))
    elif outcome is Outcome.FORBIDDEN:
        state.disabled_until = max(state.disabled_until, now + _bounded(cooldown.max))
    if verdict.preemptive_cooldown is not None:
        state.cool_model(upstream_model, now + _bounded(verdict.preemptive_cooldown), now)


def _backoff(cooldown: Cooldown, consecutive: int) -> float:
    exponent = min(max(consecutive - 1, 0), _MAX_BACKOFF_EXPONENT)
    return min(cooldown.initial * 2.0**exponent, cooldown.max)


def _bounded(seconds: float) -> float:
    """A wait in [0, one day]; NaN counts as no wait."""
    if math.isnan(seconds):
        return 0.0
    return min(max(seconds, 0.0), MAX_COOLDOWN)
