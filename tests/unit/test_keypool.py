"""Tests for proxy.keypool: rotation, cooldowns, breaker, carry-over, and invariants."""

from __future__ import annotations

from dataclasses import replace
from email.utils import formatdate

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from proxy.breaker import BreakerView
from proxy.classify import Outcome, Verdict, classify_response
from proxy.keypool import KEYLESS, KeyPool, KeyView, Lease, Refusal, Skip
from proxy.settings import (
    BreakerSettings,
    Cooldown,
    Endpoint,
    Key,
    ModelMatcher,
    Provider,
    Rotation,
    Secret,
    Timeouts,
)

BASE = "https://api.example.test/v1"
WALL_NOW = 1_700_000_000.0
COOLDOWN = Cooldown(initial=1.0, max=300.0, auth=3600.0)


def make_provider(
    name: str = "p",
    keys: int | list[str] = 2,
    *,
    rotation: Rotation = Rotation.BALANCED,
    cap: int = 0,
    cooldown: Cooldown = COOLDOWN,
    breaker: BreakerSettings | None = None,
    base_urls: tuple[str, ...] = (BASE,),
    weight: float = 1.0,
    disabled_reason: str | None = None,
) -> Provider:
    values = [f"sk-{name}-{i}" for i in range(1, keys + 1)] if isinstance(keys, int) else keys
    return Provider(
        name=name,
        tier=1,
        endpoints=tuple(Endpoint(url, None) for url in base_urls),
        models=ModelMatcher(exact={"m": "m"}, globs=()),
        keys=tuple(Key(f"#{i}", Secret(v)) for i, v in enumerate(values, start=1)),
        disabled_reason=disabled_reason,
        timeouts=Timeouts(),
        max_attempts=10,
        max_wait=5.0,
        cooldown=cooldown,
        breaker=breaker or BreakerSettings(failures=3, open_seconds=30.0),
        rotation=rotation,
        max_concurrent_per_key=cap,
        weight=weight,
    )


OK = Verdict(Outcome.OK)
LIMITED = Verdict(Outcome.RATE_LIMITED)
SERVER = Verdict(Outcome.SERVER_ERROR)


def lease_of(
    pool: KeyPool, provider: Provider, now: float = 0.0, exclude: frozenset[str] = frozenset()
) -> Lease:
    got = pool.acquire(provider, provider.endpoints[0], "m", now, exclude)
    assert isinstance(got, Lease), got
    return got


def refusal_of(pool: KeyPool, provider: Provider, now: float, model: str = "m") -> Refusal:
    got = pool.acquire(provider, provider.endpoints[0], model, now)
    assert isinstance(got, Refusal), got
    return got


def view(pool: KeyPool, key: str, now: float, provider: str = "p") -> KeyView:
    (found,) = [v for v in pool.key_views(now) if v.key == key and v.provider == provider]
    return found


def breaker_view(pool: KeyPool, now: float, base_url: str = BASE) -> BreakerView:
    (found,) = [v for v in pool.breaker_views(now) if v.base_url == base_url]
    return found


# --- leasing and rotation ------------------------------------------------------------------


def test_lease_describes_the_attempt() -> None:
    provider = make_provider()
    pool = KeyPool([provider])
    lease = lease_of(pool, provider)
    assert (lease.provider, lease.key_name, lease.upstream_model) == ("p", "#1", "m")
    assert lease.key == provider.keys[0]
    assert lease.endpoint is provider.endpoints[0]
    assert lease.provider_settings is provider
    assert not lease.probe


def test_no_secret_in_any_repr() -> None:
    provider = make_provider(keys=["sk-very-secret-value"])
    pool = KeyPool([provider])
    lease = lease_of(pool, provider)
    pool.release(lease, LIMITED, 0.0)
    texts = [repr(lease), str(lease), repr(pool.key_views(0.0)), repr(pool.breaker_views(0.0))]
    texts.append(repr(refusal_of(pool, provider, 0.0)))
    assert not any("sk-very-secret-value" in text for text in texts)


def test_keyless_provider_gets_a_pseudo_key() -> None:
    provider = make_provider(keys=0)
    pool = KeyPool([provider])
    lease = lease_of(pool, provider)
    assert lease.key is None
    assert lease.key_name == KEYLESS
    assert [v.key for v in pool.key_views(0.0)] == [KEYLESS]


def test_disabled_provider_has_no_state_and_is_refused() -> None:
    provider = make_provider(disabled_reason="no key")
    pool = KeyPool([provider])
    assert pool.key_views(0.0) == []
    assert pool.breaker_views(0.0) == []
    assert refusal_of(pool, provider, 0.0) == Refusal(Skip.DISABLED, None)


def test_balanced_prefers_least_in_flight() -> None:
    provider = make_provider(keys=3)
    pool = KeyPool([provider])
    names = [lease_of(pool, provider, now=0.0).key_name for _ in range(3)]
    assert names == ["#1", "#2", "#3"]


def test_balanced_then_least_recently_used() -> None:
    provider = make_provider(keys=3)
    pool = KeyPool([provider])
    for now, name in [(1.0, "#1"), (2.0, "#2"), (3.0, "#3")]:
        lease = lease_of(pool, provider, now=now)
        assert lease.key_name == name
        pool.release(lease, OK, now)
    # All idle now: the one used longest ago goes next, and so on around.
    assert [_use(pool, provider, now) for now in (4.0, 5.0, 6.0, 7.0)] == ["#1", "#2", "#3", "#1"]


def _use(pool: KeyPool, provider: Provider, now: float) -> str:
    lease = lease_of(pool, provider, now=now)
    pool.release(lease, OK, now)
    return lease.key_name


def test_sequential_uses_the_first_ready_key() -> None:
    provider = make_provider(keys=3, rotation=Rotation.SEQUENTIAL)
    pool = KeyPool([provider])
    assert [_use(pool, provider, float(n)) for n in range(3)] == ["#1", "#1", "#1"]
    # Even while #1 is busy with another request, sequential stays on it (no cap).
    held = lease_of(pool, provider, now=3.0)
    assert lease_of(pool, provider, now=3.0).key_name == held.key_name == "#1"
    pool.release(lease_of(pool, provider, now=4.0), LIMITED, 4.0)
    assert lease_of(pool, provider, now=4.0).key_name == "#2"


def test_exclude_skips_named_keys() -> None:
    provider = make_provider(keys=2, rotation=Rotation.SEQUENTIAL)
    pool = KeyPool([provider])
    assert lease_of(pool, provider, exclude=frozenset({"#1"})).key_name == "#2"
    got = pool.acquire(provider, provider.endpoints[0], "m", 0.0, frozenset({"#1", "#2"}))
    assert isinstance(got, Refusal)
    assert got.skip is Skip.RATE_LIMITED
    assert got.ready_at is None  # nothing this request may wait for


def test_concurrency_cap_and_busy_refusal() -> None:
    provider = make_provider(keys=2, cap=1)
    pool = KeyPool([provider])
    first, second = lease_of(pool, provider), lease_of(pool, provider)
    assert {first.key_name, second.key_name} == {"#1", "#2"}
    assert refusal_of(pool, provider, 0.0) == Refusal(Skip.BUSY, None)
    pool.release(first, OK, 1.0)
    assert lease_of(pool, provider, now=1.0).key_name == first.key_name


def test_acquire_counts_requests_and_usage_is_recorded() -> None:
    provider = make_provider(keys=1)
    pool = KeyPool([provider])
    lease = lease_of(pool, provider)
    pool.record_usage(lease, 10, 5)
    pool.record_usage(lease, 3, -1)
    pool.release(lease, OK, 1.0)
    got = view(pool, "#1", 1.0)
    assert (got.requests, got.prompt_tokens, got.completion_tokens) == (1, 13, 5)
    assert got.in_flight == 0


# --- release rules -------------------------------------------------------------------------


def test_release_twice_is_a_no_op() -> None:
    provider = make_provider(keys=1)
    pool = KeyPool([provider])
    held = lease_of(pool, provider)
    other = lease_of(pool, provider)
    pool.release(other, LIMITED, 0.0)
    pool.release(other, LIMITED, 0.0)
    assert view(pool, "#1", 0.0).in_flight == 1
    assert view(pool, "#1", 0.0).consecutive_failures == 1
    pool.release(held, None, 0.0)
    assert view(pool, "#1", 0.0).in_flight == 0


def test_cancelled_release_only_frees_the_slot() -> None:
    provider = make_provider(keys=1, cap=1)
    pool = KeyPool([provider])
    lease = lease_of(pool, provider)
    pool.release(lease, None, 0.0)
    got = view(pool, "#1", 0.0)
    assert (got.state, got.in_flight, got.consecutive_failures) == ("ready", 0, 0)
    assert isinstance(pool.acquire(provider, provider.endpoints[0], "m", 0.0), Lease)


def test_rate_limit_honours_retry_after() -> None:
    provider = make_provider(keys=1)
    pool = KeyPool([provider])
    pool.release(lease_of(pool, provider), Verdict(Outcome.RATE_LIMITED, retry_after=42.0), 10.0)
    assert refusal_of(pool, provider, 51.9) == Refusal(Skip.RATE_LIMITED, 52.0)
    got = view(pool, "#1", 20.0)
    assert (got.state, got.cooldown_remaining) == ("cooling", 32.0)
    assert isinstance(pool.acquire(provider, provider.endpoints[0], "m", 52.0), Lease)


def test_backoff_doubles_caps_and_resets_on_success() -> None:
    provider = make_provider(keys=1, cooldown=Cooldown(initial=1.0, max=5.0, auth=60.0))
    pool = KeyPool([provider])
    now = 0.0
    lengths = []
    for _ in range(5):
        pool.release(lease_of(pool, provider, now=now), LIMITED, now)
        ready_at = refusal_of(pool, provider, now).ready_at
        assert ready_at is not None
        lengths.append(ready_at - now)
        now = ready_at
    assert lengths == [1.0, 2.0, 4.0, 5.0, 5.0]
    pool.release(lease_of(pool, provider, now=now), OK, now)
    assert view(pool, "#1", now).consecutive_failures == 0
    pool.release(lease_of(pool, provider, now=now), LIMITED, now)
    assert refusal_of(pool, provider, now).ready_at == now + 1.0


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "0"},
        {"retry-after-ms": "0"},
        {"retry-after": formatdate(WALL_NOW - 60, usegmt=True)},
        {"x-ratelimit-reset-requests": "0s"},
    ],
)
def test_a_zero_or_past_wait_hint_still_rests_the_backoff(headers: dict[str, str]) -> None:
    provider = make_provider(keys=1, cooldown=Cooldown(initial=1.0, max=5.0, auth=60.0))
    pool = KeyPool([provider])
    verdict = classify_response(429, headers, b"", WALL_NOW)
    assert verdict.retry_after == 0.0
    now = 10.0
    lengths = []
    for _ in range(3):
        pool.release(lease_of(pool, provider, now=now), verdict, now)
        ready_at = refusal_of(pool, provider, now).ready_at
        assert ready_at is not None
        lengths.append(ready_at - now)
        now = ready_at
    assert lengths == [1.0, 2.0, 4.0]  # as for a 429 without any hint


def test_a_positive_wait_hint_is_honoured_even_below_the_backoff() -> None:
    provider = make_provider(keys=1, cooldown=Cooldown(initial=1.0, max=5.0, auth=60.0))
    pool = KeyPool([provider])
    pool.release(lease_of(pool, provider), Verdict(Outcome.RATE_LIMITED, retry_after=0.25), 0.0)
    assert refusal_of(pool, provider, 0.1).ready_at == 0.25
    assert isinstance(pool.acquire(provider, provider.endpoints[0], "m", 0.25), Lease)


def test_rate_limit_is_per_upstream_model() -> None:
    provider = make_provider(keys=1)
    pool = KeyPool([provider])
    endpoint = provider.endpoints[0]
    got = pool.acquire(provider, endpoint, "model-a", 0.0)
    assert isinstance(got, Lease)
    pool.release(got, Verdict(Outcome.RATE_LIMITED, retry_after=10.0), 0.0)
    assert refusal_of(pool, provider, 1.0, model="model-a").skip is Skip.RATE_LIMITED
    assert isinstance(pool.acquire(provider, endpoint, "model-b", 1.0), Lease)


def test_quota_exhausted_cools_the_whole_key_for_max() -> None:
    provider = make_provider(keys=1)
    pool = KeyPool([provider])
    quota = Verdict(Outcome.RATE_LIMITED, retry_after=5.0, quota_exhausted=True)
    pool.release(lease_of(pool, provider), quota, 0.0)
    assert refusal_of(pool, provider, 1.0, model="other") == Refusal(Skip.RATE_LIMITED, 300.0)
    assert view(pool, "#1", 1.0).state == "cooling"


def test_quota_uses_retry_after_when_longer_than_max() -> None:
    provider = make_provider(keys=1)
    pool = KeyPool([provider])
    quota = Verdict(Outcome.RATE_LIMITED, retry_after=4000.0, quota_exhausted=True)
    pool.release(lease_of(pool, provider), quota, 0.0)
    assert refusal_of(pool, provider, 1.0).ready_at == 4000.0


def test_auth_error_disables_the_whole_key() -> None:
    provider = make_provider(keys=1)
    pool = KeyPool([provider])
    pool.release(lease_of(pool, provider), Verdict(Outcome.AUTH_ERROR), 0.0)
    assert refusal_of(pool, provider, 1.0, model="other") == Refusal(Skip.DISABLED, 3600.0)
    got = view(pool, "#1", 1.0)
    assert (got.state, got.cooldown_remaining) == ("disabled", 3599.0)
    assert isinstance(pool.acquire(provider, provider.endpoints[0], "m", 3600.0), Lease)


def test_forbidden_blocks_the_whole_key_for_max() -> None:
    provider = make_provider(keys=1)
    pool = KeyPool([provider])
    pool.release(lease_of(pool, provider), Verdict(Outcome.FORBIDDEN), 0.0)
    assert refusal_of(pool, provider, 1.0, model="other") == Refusal(Skip.DISABLED, 300.0)
    assert view(pool, "#1", 1.0).state == "disabled"


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome.NOT_FOUND,
        Outcome.CLIENT_ERROR,
        Outcome.CONTEXT_LENGTH,
        Outcome.SERVER_ERROR,
        Outcome.CONNECT_ERROR,
        Outcome.TIMEOUT,
        Outcome.BAD_RESPONSE,
    ],
)
def test_no_key_penalty(outcome: Outcome) -> None:
    provider = make_provider(keys=1)
    pool = KeyPool([provider])
    pool.release(lease_of(pool, provider), Verdict(outcome), 0.0)
    got = view(pool, "#1", 0.0)
    assert (got.state, got.consecutive_failures) == ("ready", 0)
    assert isinstance(pool.acquire(provider, provider.endpoints[0], "m", 0.0), Lease)


def test_preemptive_cooldown_on_success() -> None:
    provider = make_provider(keys=2, rotation=Rotation.SEQUENTIAL)
    pool = KeyPool([provider])
    pool.release(lease_of(pool, provider), Verdict(Outcome.OK, preemptive_cooldown=8.0), 0.0)
    assert lease_of(pool, provider, now=1.0).key_name == "#2"
    assert view(pool, "#1", 1.0).state == "cooling"
    assert view(pool, "#1", 1.0).consecutive_failures == 0
    assert lease_of(pool, provider, now=8.0).key_name == "#1"


def test_cooldowns_never_shorten() -> None:
    provider = make_provider(keys=1)
    pool = KeyPool([provider])
    first, second = lease_of(pool, provider), lease_of(pool, provider)
    pool.release(first, Verdict(Outcome.RATE_LIMITED, retry_after=60.0), 0.0)
    pool.release(second, Verdict(Outcome.RATE_LIMITED, retry_after=1.0), 0.0)
    assert refusal_of(pool, provider, 2.0).ready_at == 60.0
    a, b = lease_of(pool, provider, now=60.0), lease_of(pool, provider, now=60.0)
    pool.release(a, Verdict(Outcome.AUTH_ERROR), 60.0)
    pool.release(b, Verdict(Outcome.FORBIDDEN), 60.0)
    assert refusal_of(pool, provider, 61.0).ready_at == 3660.0


def test_model_cooldowns_are_pruned_and_bounded() -> None:
    provider = make_provider(keys=1)
    pool = KeyPool([provider])
    endpoint = provider.endpoints[0]
    for n in range(1100):
        got = pool.acquire(provider, endpoint, f"model-{n}", 0.0)
        assert isinstance(got, Lease)
        pool.release(got, Verdict(Outcome.RATE_LIMITED, retry_after=10.0 + n), 0.0)
    assert view(pool, "#1", 0.0).cooldown_remaining == 10.0 + 1099
    # Past 1024 remembered models the ones ending soonest are forgotten first.
    assert isinstance(pool.acquire(provider, endpoint, "model-0", 1.0), Lease)
    assert refusal_of(pool, provider, 1.0, model="model-1099").ready_at == 1109.0
    # Past every cooldown the key is plainly ready again.
    got_view = view(pool, "#1", 5000.0)
    assert (got_view.state, got_view.cooldown_remaining) == ("ready", 0.0)


# --- refusals ------------------------------------------------------------------------------


def test_busy_wins_over_cooling_and_disabled() -> None:
    provider = make_provider(keys=3, cap=1, rotation=Rotation.SEQUENTIAL)
    pool = KeyPool([provider])
    pool.release(lease_of(pool, provider), Verdict(Outcome.AUTH_ERROR), 0.0)
    pool.release(lease_of(pool, provider), LIMITED, 0.0)
    lease_of(pool, provider)  # #3 held
    assert refusal_of(pool, provider, 0.5) == Refusal(Skip.BUSY, None)


def test_rate_limited_wins_over_disabled_with_the_soonest_end() -> None:
    provider = make_provider(keys=3, rotation=Rotation.SEQUENTIAL)
    pool = KeyPool([provider])
    pool.release(lease_of(pool, provider), Verdict(Outcome.AUTH_ERROR), 0.0)
    pool.release(lease_of(pool, provider), Verdict(Outcome.RATE_LIMITED, retry_after=20.0), 0.0)
    pool.release(lease_of(pool, provider), Verdict(Outcome.RATE_LIMITED, retry_after=9.0), 0.0)
    assert refusal_of(pool, provider, 1.0) == Refusal(Skip.RATE_LIMITED, 9.0)


def test_disabled_when_every_key_is_disabled() -> None:
    provider = make_provider(keys=2, rotation=Rotation.SEQUENTIAL)
    pool = KeyPool([provider])
    pool.release(lease_of(pool, provider), Verdict(Outcome.AUTH_ERROR), 0.0)
    pool.release(lease_of(pool, provider, now=5.0), Verdict(Outcome.FORBIDDEN), 5.0)
    assert refusal_of(pool, provider, 6.0) == Refusal(Skip.DISABLED, 305.0)


def test_earliest_ready() -> None:
    provider = make_provider(keys=2, rotation=Rotation.SEQUENTIAL)
    pool = KeyPool([provider])
    assert pool.earliest_ready(provider, "m", 1.0) == 1.0
    pool.release(lease_of(pool, provider), Verdict(Outcome.RATE_LIMITED, retry_after=30.0), 0.0)
    assert pool.earliest_ready(provider, "m", 1.0) == 1.0
    pool.release(lease_of(pool, provider), Verdict(Outcome.RATE_LIMITED, retry_after=10.0), 0.0)
    assert pool.earliest_ready(provider, "m", 1.0) == 10.0
    assert pool.earliest_ready(provider, "other", 1.0) == 1.0
    assert pool.earliest_ready(make_provider("unknown"), "m", 1.0) is None


def test_earliest_ready_waits_for_an_open_breaker() -> None:
    provider = make_provider(keys=1, breaker=BreakerSettings(failures=1, open_seconds=30.0))
    pool = KeyPool([provider])
    pool.release(lease_of(pool, provider), SERVER, 0.0)
    assert pool.earliest_ready(provider, "m", 1.0) == 30.0


def test_provider_load() -> None:
    heavy = make_provider("heavy", keys=2, weight=2.0)
    light = make_provider("light", keys=1)
    pool = KeyPool([heavy, light])
    assert pool.provider_load(heavy) == (0.0, float("-inf"))
    lease_of(pool, heavy, now=1.0)
    lease_of(pool, heavy, now=2.0)
    lease_of(pool, light, now=3.0)
    assert pool.provider_load(heavy) == (1.0, 2.0)
    assert pool.provider_load(light) == (1.0, 3.0)


# --- breaker -------------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures() -> None:
    provider = make_provider(keys=1)  # failures=3, open 30 s
    pool = KeyPool([provider])
    for now in (0.0, 1.0):
        pool.release(lease_of(pool, provider, now=now), SERVER, now)
    pool.release(lease_of(pool, provider, now=2.0), OK, 2.0)  # success resets the count
    for now in (3.0, 4.0):
        pool.release(lease_of(pool, provider, now=now), SERVER, now)
    assert breaker_view(pool, 4.0).state == "closed"
    pool.release(lease_of(pool, provider, now=5.0), Verdict(Outcome.TIMEOUT), 5.0)
    assert refusal_of(pool, provider, 6.0) == Refusal(Skip.BREAKER_OPEN, 35.0)
    assert breaker_view(pool, 6.0) == BreakerView("p", BASE, "open", 29.0)


@pytest.mark.parametrize("outcome", [Outcome.NOT_FOUND, Outcome.CLIENT_ERROR, Outcome.RATE_LIMITED])
def test_an_answer_resets_the_breaker_count(outcome: Outcome) -> None:
    # Two keys: a rate-limited one rests, and the third attempt takes the other.
    provider = make_provider(keys=2, breaker=BreakerSettings(failures=2, open_seconds=30.0))
    pool = KeyPool([provider])
    pool.release(lease_of(pool, provider), SERVER, 0.0)
    pool.release(lease_of(pool, provider), Verdict(outcome), 0.0)
    pool.release(lease_of(pool, provider), SERVER, 0.0)
    assert breaker_view(pool, 0.0).state == "closed"


def _open_breaker(pool: KeyPool, provider: Provider, now: float) -> None:
    for _ in range(provider.breaker.failures):
        pool.release(lease_of(pool, provider, now=now), SERVER, now)


def test_half_open_lets_one_probe_and_closes_on_success() -> None:
    provider = make_provider(keys=2)
    pool = KeyPool([provider])
    _open_breaker(pool, provider, 0.0)
    assert breaker_view(pool, 30.0).state == "half_open"
    probe = lease_of(pool, provider, now=30.0)
    assert probe.probe
    assert refusal_of(pool, provider, 30.0) == Refusal(Skip.BREAKER_OPEN, None)
    pool.release(probe, OK, 31.0)
    assert breaker_view(pool, 31.0).state == "closed"
    after = [lease_of(pool, provider, now=31.0) for _ in range(3)]
    assert not any(lease.probe for lease in after)


def test_failed_probe_reopens() -> None:
    provider = make_provider(keys=1)
    pool = KeyPool([provider])
    _open_breaker(pool, provider, 0.0)
    probe = lease_of(pool, provider, now=40.0)
    pool.release(probe, Verdict(Outcome.CONNECT_ERROR), 41.0)
    assert refusal_of(pool, provider, 41.0) == Refusal(Skip.BREAKER_OPEN, 71.0)
    assert breaker_view(pool, 41.0) == BreakerView("p", BASE, "open", 30.0)


def test_cancelled_probe_frees_the_probe_slot_only() -> None:
    provider = make_provider(keys=1)
    pool = KeyPool([provider])
    _open_breaker(pool, provider, 0.0)
    pool.release(lease_of(pool, provider, now=30.0), None, 30.0)
    assert breaker_view(pool, 30.0).state == "half_open"
    assert lease_of(pool, provider, now=30.0).probe


def test_probe_refused_by_keys_does_not_take_the_probe_slot() -> None:
    # Two providers behind one base URL share its breaker.
    busy = make_provider("busy", keys=1, cap=1)
    other = make_provider("other", keys=1)
    pool = KeyPool([busy, other])
    held = lease_of(pool, busy)
    _open_breaker(pool, other, 0.0)
    assert refusal_of(pool, busy, 30.0).skip is Skip.BUSY
    pool.release(held, None, 30.0)
    assert lease_of(pool, busy, now=30.0).probe


def test_stale_results_do_not_move_an_open_breaker() -> None:
    provider = make_provider(keys=1)
    pool = KeyPool([provider])
    stale = [lease_of(pool, provider) for _ in range(2)]
    _open_breaker(pool, provider, 0.0)
    pool.release(stale[0], OK, 5.0)
    assert breaker_view(pool, 5.0).state == "open"
    pool.release(stale[1], SERVER, 29.0)
    assert breaker_view(pool, 29.0).open_remaining == 1.0


def test_breaker_is_per_endpoint() -> None:
    other = "https://other.example.test/v1"
    provider = make_provider(keys=1, base_urls=(BASE, other))
    pool = KeyPool([provider])
    _open_breaker(pool, provider, 0.0)
    assert refusal_of(pool, provider, 1.0).skip is Skip.BREAKER_OPEN
    assert isinstance(pool.acquire(provider, provider.endpoints[1], "m", 1.0), Lease)
    assert [v.state for v in pool.breaker_views(1.0)] == ["open", "closed"]


def test_zero_failures_setting_never_opens() -> None:
    provider = make_provider(keys=1, breaker=BreakerSettings(failures=0, open_seconds=30.0))
    pool = KeyPool([provider])
    for _ in range(10):
        pool.release(lease_of(pool, provider), SERVER, 0.0)
    assert breaker_view(pool, 0.0).state == "closed"


# --- carry-over ----------------------------------------------------------------------------


def test_reload_carries_state_of_surviving_keys() -> None:
    old_provider = make_provider(keys=["sk-a", "sk-b"])
    old = KeyPool([old_provider])
    old.release(lease_of(old, old_provider), Verdict(Outcome.AUTH_ERROR), 0.0)  # sk-a
    in_flight = lease_of(old, old_provider)  # sk-b
    assert in_flight.key_name == "#2"
    # sk-a renamed and moved; sk-b gone; sk-c new.
    new_provider = replace(
        old_provider,
        keys=(Key("#1", Secret("sk-c")), Key("team-a", Secret("sk-a"))),
    )
    new = KeyPool([new_provider], previous=old)
    views = {v.key: v for v in new.key_views(1.0)}
    assert views["team-a"].state == "disabled"
    assert views["team-a"].requests == 1
    assert views["#1"].state == "ready"
    assert lease_of(new, new_provider, now=1.0).key_name == "#1"
    old.release(in_flight, OK, 2.0)  # the old table's lease still releases cleanly


def test_old_lease_releases_into_the_carried_state() -> None:
    provider = make_provider(keys=1, cap=1)
    old = KeyPool([provider])
    held = lease_of(old, provider)
    new = KeyPool([provider], previous=old)
    assert refusal_of(new, provider, 0.0).skip is Skip.BUSY
    old.release(held, Verdict(Outcome.RATE_LIMITED, retry_after=10.0), 1.0)
    assert refusal_of(new, provider, 2.0) == Refusal(Skip.RATE_LIMITED, 11.0)


def test_reload_carries_breakers_by_base_url() -> None:
    provider = make_provider(keys=1)
    old = KeyPool([provider])
    _open_breaker(old, provider, 0.0)
    renamed = replace(provider, name="q")
    new = KeyPool([renamed], previous=old)
    assert refusal_of(new, renamed, 1.0) == Refusal(Skip.BREAKER_OPEN, 30.0)
    moved = replace(provider, endpoints=(Endpoint("https://elsewhere.test/v1", None),))
    assert isinstance(
        KeyPool([moved], previous=old).acquire(moved, moved.endpoints[0], "m", 1.0), Lease
    )


def test_same_key_of_another_provider_is_separate_state() -> None:
    a = make_provider("a", keys=["sk-shared"])
    b = make_provider("b", keys=["sk-shared"], base_urls=("https://b.test/v1",))
    pool = KeyPool([a, b])
    pool.release(lease_of(pool, a), Verdict(Outcome.AUTH_ERROR), 0.0)
    assert view(pool, "#1", 0.0, provider="b").state == "ready"


# --- properties ----------------------------------------------------------------------------

# Key and provider failures are drawn more often than their share of the enum so that
# cooldowns overlap and the breaker opens within a few steps.
_OUTCOMES = [
    *Outcome,
    Outcome.RATE_LIMITED,
    Outcome.AUTH_ERROR,
    Outcome.FORBIDDEN,
    Outcome.SERVER_ERROR,
]
_VERDICTS = st.one_of(
    st.none(),
    st.builds(
        Verdict,
        st.sampled_from(_OUTCOMES),
        st.one_of(st.none(), st.sampled_from([0.0, 0.5, 3.0, 30.0]), st.floats(0.0, 50.0)),
        st.booleans(),
        st.one_of(st.none(), st.sampled_from([0.5, 3.0, 30.0]), st.floats(0.0, 50.0)),
    ),
)
_CAP = 3
_KEYS = ("#1", "#2")


class PoolMachine(RuleBasedStateMachine):
    """Random acquire / release / time steps against a model of what must always hold."""

    leases = Bundle("leases")

    @initialize(rotation=st.sampled_from(list(Rotation)), failures=st.sampled_from([1, 2]))
    def configure(self, rotation: Rotation, failures: int) -> None:
        self.provider = make_provider(
            keys=len(_KEYS),
            cap=_CAP,
            rotation=rotation,
            cooldown=Cooldown(initial=1.0, max=20.0, auth=40.0),
            breaker=BreakerSettings(failures=failures, open_seconds=5.0),
        )
        self.pool = KeyPool([self.provider])
        self.now = 0.0
        # Lower bounds on cooldown ends implied by the verdicts fed so far.
        self.whole_until: dict[str, float] = dict.fromkeys(_KEYS, 0.0)
        self.model_until: dict[tuple[str, str], float] = {}
        self.held: dict[str, int] = dict.fromkeys(_KEYS, 0)
        self.probes = 0

    @rule(target=leases, model=st.sampled_from(["a", "b"]), exclude=st.sets(st.sampled_from(_KEYS)))
    def acquire(self, model: str, exclude: set[str]) -> Lease | MultipleResults[Lease]:
        got = self.pool.acquire(
            self.provider, self.provider.endpoints[0], model, self.now, frozenset(exclude)
        )
        if isinstance(got, Refusal):
            assert got.ready_at is None or got.ready_at > self.now
            return multiple()
        name = got.key_name
        assert name not in exclude
        assert self.now >= self.whole_until[name]
        assert self.now >= self.model_until.get((name, model), 0.0)
        self.held[name] += 1
        assert self.held[name] <= _CAP
        self.probes += got.probe
        assert self.probes <= 1
        return got

    @rule(lease=consumes(leases), outcome=_VERDICTS, twice=st.booleans())
    def release(self, lease: Lease, outcome: Verdict | None, twice: bool) -> None:
        self.pool.release(lease, outcome, self.now)
        if twice:
            self.pool.release(lease, outcome, self.now)
        self.held[lease.key_name] -= 1
        self.probes -= lease.probe
        if outcome is not None:
            self._expect(lease, outcome)

    def _expect(self, lease: Lease, v: Verdict) -> None:
        name, model, now = lease.key_name, lease.upstream_model, self.now
        if v.outcome is Outcome.RATE_LIMITED and v.quota_exhausted:
            self._whole(name, now + max(20.0, v.retry_after or 0.0))
        elif v.outcome is Outcome.RATE_LIMITED:
            # A zero hint rests the backoff, at least `initial`.
            wait = v.retry_after if v.retry_after else 1.0
            self._model(name, model, now + wait)
        elif v.outcome is Outcome.AUTH_ERROR:
            self._whole(name, now + 40.0)
        elif v.outcome is Outcome.FORBIDDEN:
            self._whole(name, now + 20.0)
        if v.preemptive_cooldown is not None:
            self._model(name, model, now + v.preemptive_cooldown)

    def _whole(self, name: str, until: float) -> None:
        self.whole_until[name] = max(self.whole_until[name], until)

    def _model(self, name: str, model: str, until: float) -> None:
        key = (name, model)
        self.model_until[key] = max(self.model_until.get(key, 0.0), until)

    @rule(step=st.one_of(st.sampled_from([0.5, 1.0, 5.0]), st.floats(0.0, 30.0)))
    def advance(self, step: float) -> None:
        self.now += step

    @invariant()
    def views_agree(self) -> None:
        for v in self.pool.key_views(self.now):
            assert v.in_flight == self.held[v.key] >= 0
            assert v.cooldown_remaining >= 0.0
            wait = max(
                [self.whole_until[v.key] - self.now]
                + [u - self.now for (k, _), u in self.model_until.items() if k == v.key]
            )
            if wait > 0:
                # A cooldown never ends early: still not ready, at least that long to go.
                assert v.state != "ready"
                assert v.cooldown_remaining >= wait - 1e-9
            if self.whole_until[v.key] > self.now:
                assert v.state in ("cooling", "disabled")


PoolMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestPoolProperties = PoolMachine.TestCase
