"""Frozen value types for a loaded configuration.

`proxy.config` builds these from YAML; everything else only reads them. They hold
no I/O and no clock, so routing and key-pool logic can be tested from plain objects.

Secrets (upstream keys, proxy keys) are wrapped in `Secret`, whose `repr` and `str`
never show the value: a `Settings` object can be logged or printed safely.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import StrEnum


class Secret:
    """A credential value that never shows itself in `repr`, `str` or logs."""

    __slots__ = ("_value", "fingerprint")

    def __init__(self, value: str) -> None:
        self._value = value
        # A stable, non-reversible identity: used to carry key state across reloads
        # and in any file or log that must refer to a key without holding it.
        self.fingerprint = hashlib.sha256(value.encode()).hexdigest()[:16]

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)


class Rotation(StrEnum):
    BALANCED = "balanced"
    SEQUENTIAL = "sequential"


class Continuation(StrEnum):
    NONE = "none"
    PREFILL = "prefill"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. `first_byte` runs to the first data event of a stream."""

    connect: float = 5.0
    first_byte: float = 60.0
    idle: float = 60.0
    total: float = 600.0


@dataclass(frozen=True, slots=True)
class Cooldown:
    """Seconds. `initial` doubles per consecutive failure up to `max`."""

    initial: float = 1.0
    max: float = 300.0
    auth: float = 3600.0


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failures: int = 5
    open_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class Key:
    """One upstream credential. `name` is how logs, metrics and status refer to it."""

    name: str
    secret: Secret


@dataclass(frozen=True, slots=True)
class Glob:
    """A compiled model-name pattern (`*`, `?`, `[...]`), matched case-sensitively."""

    pattern: str
    regex: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, name: str) -> bool:
        return self.regex.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class ModelRule:
    """One entry of a provider's `models`.

    `upstream` is None when a matching name is forwarded unchanged (list entries),
    else the upstream model name the match is sent as (map entries).
    Exactly one of `name` (an exact public name) and `glob` is set.
    """

    name: str | None
    glob: Glob | None
    upstream: str | None

    def resolve(self, public: str) -> str | None:
        """The upstream name for `public`, or None when this rule does not match."""
        if self.name is not None:
            if public != self.name:
                return None
        elif self.glob is None or not self.glob.matches(public):
            return None
        return public if self.upstream is None else self.upstream


@dataclass(frozen=True, slots=True)
class ModelMatcher:
    """A provider's `models`: exact names first, then globs in declared order."""

    exact: dict[str, str]
    globs: tuple[ModelRule, ...]

    def resolve(self, public: str) -> str | None:
        upstream = self.exact.get(public)
        if upstream is not None:
            return upstream
        for rule in self.globs:
            upstream = rule.resolve(public)
            if upstream is not None:
                return upstream
        return None

    def public_names(self) -> tuple[str, ...]:
        """Exact public names, in declared order (what `/v1/models` lists)."""
        return tuple(self.exact)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One base URL of a provider. `models` are globs on the upstream model name;
    None means every model. `disabled_reason` is set when the base URL expanded to ""."""

    base_url: str
    models: tuple[Glob, ...] | None
    disabled_reason: str | None = None

    def serves(self, upstream_model: str) -> bool:
        if self.models is None:
            return True
        return any(g.matches(upstream_model) for g in self.models)


@dataclass(frozen=True, slots=True)
class AuthHeader:
    """How a key is sent: `Authorization: Bearer <key>` by default, `api-key: <key>` for Azure."""

    name: str = "Authorization"
    prefix: str = "Bearer "

    def value(self, secret: Secret) -> str:
        return self.prefix + secret.reveal()


@dataclass(frozen=True, slots=True)
class Provider:
    """One named provider after defaults, environment and overrides are applied."""

    name: str
    tier: int
    endpoints: tuple[Endpoint, ...]
    models: ModelMatcher | None  # None: serves what its endpoints' patterns match
    keys: tuple[Key, ...]  # empty and not disabled: keyless (no auth header sent)
    disabled_reason: str | None
    timeouts: Timeouts
    max_attempts: int
    max_wait: float
    cooldown: Cooldown
    breaker: BreakerSettings
    rotation: Rotation
    max_concurrent_per_key: int
    # Extra upstream headers may carry credentials of their own: never shown in a repr.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    auth_header: AuthHeader = AuthHeader()
    weight: float = 1.0
    paths: frozenset[str] | None = None  # e.g. {"chat/completions"}; None: every path
    continuation: Continuation = Continuation.NONE

    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    @property
    def keyless(self) -> bool:
        return not self.keys

    def upstream_model(self, public: str) -> str | None:
        """The upstream model name this provider serves `public` as, or None."""
        if self.models is not None:
            return self.models.resolve(public)
        # No `models`: whatever one of its enabled endpoints' patterns accepts.
        for endpoint in self.endpoints:
            if endpoint.disabled_reason is None and endpoint.serves(public):
                return public
        return None

    def endpoint_for(self, upstream_model: str) -> Endpoint | None:
        """The first enabled endpoint whose patterns match the upstream model."""
        for endpoint in self.endpoints:
            if endpoint.disabled_reason is None and endpoint.serves(upstream_model):
                return endpoint
        return None

    def serves_path(self, path: str) -> bool:
        return self.paths is None or path in self.paths


# The largest plain (non-stream) upstream answer the proxy holds in memory, as inflated: a
# JSON answer is read whole before it is relayed, so this bounds what one request can cost.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[Secret, ...] = ()
    allow_unauthenticated: bool = False
    max_body_bytes: int = 32 * 1024 * 1024
    max_response_bytes: int = MAX_RESPONSE_BYTES
    shutdown_grace_seconds: float = 30.0
    sse_keepalive_seconds: float = 15.0


@dataclass(frozen=True, slots=True)
class Settings:
    """A whole validated configuration. `providers` keeps declaration order."""

    server: ServerSettings
    providers: tuple[Provider, ...]
    source: str = ""  # the file it was read from, for messages

    def provider(self, name: str) -> Provider | None:
        for p in self.providers:
            if p.name == name:
                return p
        return None
