"""The attempt loop: try candidates in order until one answers, then commit to it.

For each candidate (SPEC §3, §5): take a key from the pool; on a key failure (401, 402/403,
408/429) try another key of the same provider; on a transient provider failure (5xx, connect)
try the same provider once more after a short jittered pause; on a timeout, a bad response or a
404, move to the next provider; on `context_length_exceeded`, move to a candidate with another
upstream model; a client error (400/413/415/422) is returned as it is. When every key of the
providers left in a tier is cooling and the first cooldown ends within `max_wait`, wait for it
rather than drop to a worse tier. `max_attempts` and the total deadline bound it all.

The loop knows nothing about HTTP responses to the client: it is given a `try_once` function
and returns either the winning result (with its lease still held) or an `Exhausted` summary
from which `exhausted_error` makes the final status (404/429/503/504/502 or the upstream 400).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from proxy.attempt import Failed
from proxy.classify import KEY_FAILURES, Outcome
from proxy.errors import ProxyError, model_not_found
from proxy.keypool import KeyPool, Lease, Refusal, Skip
from proxy.observer import Observer
from proxy.routing import Candidate, Plan
from proxy.settings import Rotation

# A transient failure is retried once on the same provider after this pause, jittered ±50%:
# long enough for a restarting upstream, short enough to stay well inside first-byte budgets.
TRANSIENT_RETRY_PAUSE = 0.5

_SKIP_AS_OUTCOME = {
    Skip.RATE_LIMITED: Outcome.RATE_LIMITED,
    Skip.BUSY: Outcome.RATE_LIMITED,
    Skip.BREAKER_OPEN: Outcome.SERVER_ERROR,
    Skip.DISABLED: Outcome.AUTH_ERROR,
}

R = TypeVar("R")


@dataclass(slots=True)
class Won(Generic[R]):
    """The attempt that answered; its lease is still held and must be released by the caller."""

    result: R
    candidate: Candidate
    lease: Lease


@dataclass(slots=True)
class Exhausted:
    """Every candidate failed or was skipped."""

    plan: Plan
    attempted: int = 0
    all_rate_limited: bool = True
    last_failure: Failed | None = None
    context_failure: Failed | None = None  # a context_length 400 not followed by another attempt
    client_failure: Failed | None = None  # a 4xx to return as it is (no failover)
    retry_after: float | None = None  # until the first candidate key is ready, when it ended


@dataclass(slots=True)
class Trail:
    """What one request did upstream: for the error message, headers, the log line."""

    attempts: list[tuple[str, str]] = field(default_factory=list)  # (provider, outcome)
    last_tier: int | None = None
    last_reason: str | None = None

    def add(self, provider: str, outcome: str) -> None:
        self.attempts.append((provider, outcome))

    @property
    def count(self) -> int:
        return sum(1 for _, outcome in self.attempts if not outcome.startswith("skipped"))

    def summary(self) -> str:
        return ", ".join(f"{p}: {o}" for p, o in self.attempts)


TryOnce = Callable[[Candidate, Lease], Awaitable["R | Failed"]]


class Failover:
    """Runs the attempt loop for one request over a plan, a key pool and an observer."""

    def __init__(
        self,
        pool: KeyPool,
        observer: Observer,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._pool = pool
        self._observer = observer
        self._clock = clock
        self._sleep = sleep

    async def run(
        self,
        plan: Plan,
        trail: Trail,
        deadline: float,
        try_once: Callable[[Candidate, Lease], Awaitable[R | Failed]],
    ) -> Won[R] | Exhausted:
        state = Exhausted(plan)
        if plan.empty:
            return state
        won = await self._run_tiers(plan, trail, state, deadline, try_once)
        if won is not None:
            return won
        state.retry_after = self._soonest_ready(plan)
        return state

    async def _run_tiers(
        self,
        plan: Plan,
        trail: Trail,
        state: Exhausted,
        deadline: float,
        try_once: Callable[[Candidate, Lease], Awaitable[R | Failed]],
    ) -> Won[R] | None:
        first = plan.tiers[0][0].provider
        budget = _Budget(first.max_attempts, deadline)
        context_models: set[str] = set()
        for group in plan.tiers:
            pending = self._order(group, plan.pinned)
            while pending:
                waitable: list[tuple[float, Candidate]] = []
                for candidate in pending:
                    if candidate.upstream_model in context_models:
                        continue
                    won = await self._try_candidate(
                        candidate, trail, state, budget, context_models, waitable, try_once
                    )
                    if won is not None:
                        return won
                    if budget.spent(self._clock()) or state.client_failure is not None:
                        return None
                pending = await self._wait_for_cooldown(waitable, budget)
        return None

    def _soonest_ready(self, plan: Plan) -> float | None:
        """Seconds until some candidate's key can be used again, as the pool has it now.

        Not the upstreams' hints: the pool may rest a key longer (a spent quota rests
        `cooldown.max`, a zero hint the backoff), and a hint read before a wait is stale.
        """
        now = self._clock()
        ends = [
            self._pool.earliest_ready(c.provider, c.upstream_model, now)
            for group in plan.tiers
            for c in group
        ]
        known = [end for end in ends if end is not None]
        return min(known) - now if known else None

    def _order(self, group: tuple[Candidate, ...], pinned: str | None) -> list[Candidate]:
        """Declared order, or least-loaded first (by weight) when the tier rotates balanced.

        A pinned provider stays ahead of its tier whatever its load (SPEC §3): the plan put it
        first, and only the providers after it are balanced.
        """
        lead = 1 if pinned is not None and group[0].provider.name == pinned else 0
        rest = group[lead:]
        if len(rest) < 2 or any(c.provider.rotation is not Rotation.BALANCED for c in rest):
            return list(group)
        return [*group[:lead], *sorted(rest, key=lambda c: self._pool.provider_load(c.provider))]

    async def _wait_for_cooldown(
        self, waitable: list[tuple[float, Candidate]], budget: _Budget
    ) -> list[Candidate]:
        """Sleep until the first cooling key of this tier is ready, if that is soon enough."""
        if not waitable:
            return []
        ready_at = min(at for at, _ in waitable)
        if ready_at >= budget.deadline or budget.attempts_left <= 0:
            return []
        delay = ready_at - self._clock()
        if delay > 0:
            await self._sleep(delay)
        return [c for _, c in sorted(waitable, key=lambda pair: pair[0])]

    async def _try_candidate(
        self,
        candidate: Candidate,
        trail: Trail,
        state: Exhausted,
        budget: _Budget,
        context_models: set[str],
        waitable: list[tuple[float, Candidate]],
        try_once: Callable[[Candidate, Lease], Awaitable[R | Failed]],
    ) -> Won[R] | None:
        provider = candidate.provider
        used: set[str] = set()
        retried_transient = False
        tried = False
        while True:
            now = self._clock()
            if budget.spent(now):
                return None
            lease = self._pool.acquire(
                provider, candidate.endpoint, candidate.upstream_model, now, frozenset(used)
            )
            if isinstance(lease, Refusal):
                self._note_skip(candidate, lease, trail, state, now, waitable, tried)
                return None
            self._note_fallback(candidate, trail)
            tried = True
            budget.attempts_left -= 1
            state.attempted += 1
            try:
                result = await try_once(candidate, lease)
            except BaseException:
                self._pool.release(lease, None, self._clock())
                raise
            if not isinstance(result, Failed):
                return Won(result, candidate, lease)
            outcome = result.verdict.outcome
            self._pool.release(lease, result.verdict, self._clock())
            self._observer.attempt(provider.tier, provider.name, outcome.value, None)
            trail.add(provider.name, outcome.value)
            trail.last_tier, trail.last_reason = provider.tier, outcome.value
            state.last_failure = result
            state.context_failure = None
            if outcome is not Outcome.RATE_LIMITED:
                state.all_rate_limited = False
            if outcome is Outcome.CLIENT_ERROR:
                state.client_failure = result
                return None
            if outcome is Outcome.CONTEXT_LENGTH:
                context_models.add(candidate.upstream_model)
                state.context_failure = result
                return None
            if outcome in KEY_FAILURES:
                if lease.key is None:
                    return None  # keyless: there is no other key to try
                # A rate-limited key stays a candidate: the pool refuses it while it cools,
                # and its end may be waited for. Any other key failure rules it out here.
                if outcome is not Outcome.RATE_LIMITED:
                    used.add(lease.key_name)
                continue
            if outcome in (Outcome.SERVER_ERROR, Outcome.CONNECT_ERROR) and not retried_transient:
                retried_transient = True
                pause = TRANSIENT_RETRY_PAUSE * random.uniform(0.5, 1.5)
                if self._clock() + pause < budget.deadline and budget.attempts_left > 0:
                    await self._sleep(pause)
                    continue
            return None

    def _note_skip(
        self,
        candidate: Candidate,
        refusal: Refusal,
        trail: Trail,
        state: Exhausted,
        now: float,
        waitable: list[tuple[float, Candidate]],
        tried: bool,
    ) -> None:
        """No key could be had: remember why, and whether waiting for one is worth it."""
        provider = candidate.provider
        if not tried:
            label = f"skipped ({refusal.skip.value})"
            if not trail.attempts or trail.attempts[-1] != (provider.name, label):
                trail.add(provider.name, label)
            if refusal.skip not in (Skip.RATE_LIMITED, Skip.BUSY):
                state.all_rate_limited = False
        if (
            refusal.ready_at is not None
            and refusal.skip in (Skip.RATE_LIMITED, Skip.BUSY)
            and refusal.ready_at - now <= provider.max_wait
        ):
            waitable.append((refusal.ready_at, candidate))
        if not tried and (trail.last_tier is None or trail.last_tier == provider.tier):
            trail.last_tier = provider.tier
            trail.last_reason = _SKIP_AS_OUTCOME[refusal.skip].value

    def _note_fallback(self, candidate: Candidate, trail: Trail) -> None:
        tier = candidate.provider.tier
        if trail.last_tier is not None and trail.last_tier != tier and trail.last_reason:
            self._observer.fallback(trail.last_tier, tier, trail.last_reason)
        trail.last_tier = tier


@dataclass(slots=True)
class _Budget:
    attempts_left: int
    deadline: float

    def spent(self, now: float) -> bool:
        return self.attempts_left <= 0 or now >= self.deadline


def exhausted_error(state: Exhausted, model: str, trail: Trail) -> ProxyError | Failed:
    """The final answer when nothing answered (SPEC §3); a `Failed` means relay it as it is."""
    if state.client_failure is not None:
        return state.client_failure
    if state.plan.empty:
        if state.plan.pinned_unserved:
            return model_not_found(model, f"Provider '{state.plan.pinned}' does not serve it.")
        detail = "; ".join(state.plan.disabled)
        return model_not_found(model, detail)
    if state.context_failure is not None:
        return state.context_failure
    summary = trail.summary()
    retry = _retry_after_header(state.retry_after)
    if state.all_rate_limited and trail.attempts:
        return ProxyError(
            429,
            f"Every upstream for '{model}' is rate-limited. Attempts: {summary}.",
            "rate_limit_error",
            "rate_limit_exceeded",
            headers=retry,
        )
    last = state.last_failure
    if last is not None and last.verdict.outcome is Outcome.TIMEOUT:
        return ProxyError(
            504,
            f"Upstreams for '{model}' did not answer in time. Attempts: {summary}.",
            "api_error",
            "upstream_timeout",
        )
    if state.attempted == 0:
        return ProxyError(
            503,
            f"No upstream for '{model}' is available right now. Attempts: {summary}.",
            "api_error",
            "upstream_unavailable",
            headers=retry,
        )
    return ProxyError(
        502,
        f"Every upstream for '{model}' failed. Attempts: {summary}.",
        "api_error",
        "upstream_error",
    )


def _retry_after_header(seconds: float | None) -> tuple[tuple[str, str], ...]:
    if seconds is None:
        return (("Retry-After", "1"),)
    return (("Retry-After", str(max(1, math.ceil(seconds)))),)
