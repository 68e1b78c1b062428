"""One provider's YAML mapping -> a `Provider` with its endpoints, models and keys.

Most of a provider's fields have a value in three places, and the most specific wins:
the built-ins here, then `defaults`, then the provider itself; the nested maps
(`timeouts`, `cooldown`, `breaker`) merge field by field, so a provider can change one
timeout and keep the others.

What the environment switches off disables a provider instead of failing the whole
configuration: an empty `base_url` (`${SOME_BASE:-}` left unset), keys that are unset
(see `proxy.configkeys`), `enabled: false`. The reason is kept for `check`, the start-up
log and the status page. Anything malformed is an error naming its YAML path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from fnmatch import translate
from typing import Any
from urllib.parse import urlsplit

from proxy.configkeys import read_keys
from proxy.configread import (
    BLANK_OR_CONTROL,
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    Range,
    Reader,
    describe,
    join,
    kind,
)
from proxy.envsubst import describe_absence, env_name, sole_reference
from proxy.settings import (
    AuthHeader,
    BreakerSettings,
    Continuation,
    Cooldown,
    Endpoint,
    Glob,
    ModelMatcher,
    ModelRule,
    Provider,
    Rotation,
    Timeouts,
)

_NESTED: dict[str, tuple[type[Any], dict[str, Range]]] = {
    "timeouts": (Timeouts, dict.fromkeys(("connect", "first_byte", "idle", "total"), POSITIVE)),
    "cooldown": (Cooldown, dict.fromkeys(("initial", "max", "auth"), POSITIVE)),
    "breaker": (BreakerSettings, {"failures": COUNT, "open_seconds": POSITIVE}),
}
_SCALARS: dict[str, Range] = {
    "max_attempts": COUNT,
    "max_wait": NON_NEGATIVE,
    "max_concurrent_per_key": Range(integer=True),
}
# Provider takes these without defaults of its own: the built-ins live here.
_BUILTIN: dict[str, Any] = {
    "max_attempts": 10,
    "max_wait": 5.0,
    "max_concurrent_per_key": 0,
    "rotation": Rotation.BALANCED,
}
_COMMON_FIELDS = (*_NESTED, *_SCALARS, "rotation")
_PROVIDER_FIELDS = (
    "tier",
    "base_url",
    "endpoints",
    "keys",
    "keys_from_env",
    "keys_optional",
    "models",
    "headers",
    "auth_header",
    "weight",
    "paths",
    "continuation",
    "enabled",
    *_COMMON_FIELDS,
)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)
_HEADER_JUNK = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_GLOB_CHARS = frozenset("*?[")


# --- defaults -----------------------------------------------------------------------------


def read_defaults(reader: Reader, raw: object) -> dict[str, Any]:
    """The fields shared by `defaults` and providers that are set here (none filled in)."""
    fields = reader.fields({} if raw is None else raw, "defaults", _COMMON_FIELDS) or {}
    return _common_values(reader, fields, "defaults")


def _common_values(reader: Reader, fields: Mapping[str, object], path: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, (_, rules) in _NESTED.items():
        if name not in fields:
            continue
        section = reader.fields(fields[name], join(path, name), tuple(rules)) or {}
        nested: dict[str, Any] = {}
        for field_name, raw in section.items():
            number = reader.number(raw, join(join(path, name), field_name), rules[field_name])
            if number is not None:
                nested[field_name] = number
        values[name] = nested
    for name, rule in _SCALARS.items():
        if name in fields:
            number = reader.number(fields[name], join(path, name), rule)
            if number is not None:
                values[name] = number
    if "rotation" in fields:
        rotation = reader.choice(fields["rotation"], join(path, "rotation"), Rotation)
        if rotation is not None:
            values["rotation"] = rotation
    return values


def _merge(defaults: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """Built-ins <- `defaults` <- the provider's own, nested maps merged field by field."""
    merged = {name: own.get(name, defaults.get(name, value)) for name, value in _BUILTIN.items()}
    for name, (cls, _) in _NESTED.items():
        merged[name] = cls(**{**defaults.get(name, {}), **own.get(name, {})})
    return merged


# --- providers ----------------------------------------------------------------------------


def read_provider(
    reader: Reader, name: str, body: object, defaults: Mapping[str, Any]
) -> Provider | None:
    """The provider `name` (disabled, with the reason, when the environment says so), or
    None when its mapping is too broken to build one; every problem is on `reader`."""
    path = join("providers", name)
    fields = reader.fields(body, path, _PROVIDER_FIELDS)
    if fields is None:
        return None
    extras: dict[str, Any] = {}

    tier = 1
    if "tier" in fields:
        number = reader.number(fields["tier"], join(path, "tier"), COUNT)
        tier = tier if number is None else int(number)
    priority = f"PROVIDER_PRIORITY_{env_name(name)}"
    if reader.environ.get(priority, "").strip():
        override = reader.env_integer(priority, COUNT)
        tier = tier if override is None else override

    endpoints, endpoint_reason = _endpoints(reader, fields, path)
    models = None
    if "models" in fields:
        models = _models(reader, fields["models"], join(path, "models"))
    elif not any(endpoint.models is not None for endpoint in endpoints) and (
        "base_url" in fields or "endpoints" in fields
    ):
        reader.fail(join(path, "models"), "required (or give endpoint models)")
    keys, key_reason = read_keys(reader, fields, path)

    if "headers" in fields:
        extras["headers"] = _headers(reader, fields["headers"], join(path, "headers"))
    if "auth_header" in fields:
        auth_header = _auth_header(reader, fields["auth_header"], join(path, "auth_header"))
        if auth_header is not None:
            extras["auth_header"] = auth_header
    if "weight" in fields:
        weight = reader.number(fields["weight"], join(path, "weight"), POSITIVE)
        if weight is not None:
            extras["weight"] = weight
    if "paths" in fields:
        extras["paths"] = _paths(reader, fields["paths"], join(path, "paths"))
    if "continuation" in fields:
        continuation = reader.choice(
            fields["continuation"], join(path, "continuation"), Continuation
        )
        if continuation is not None:
            extras["continuation"] = continuation
    enabled = True
    if "enabled" in fields:
        enabled = reader.boolean(fields["enabled"], join(path, "enabled")) is not False

    reason = "enabled: false" if not enabled else endpoint_reason or key_reason
    common = _merge(defaults, _common_values(reader, fields, path))
    return Provider(
        name=name,
        tier=tier,
        endpoints=endpoints,
        models=models,
        keys=keys,
        disabled_reason=reason,
        **common,
        **extras,
    )


def _endpoints(
    reader: Reader, fields: Mapping[str, object], path: str
) -> tuple[tuple[Endpoint, ...], str | None]:
    """The provider's endpoints, and why it is disabled when none of them is usable."""
    if "base_url" in fields and "endpoints" in fields:
        reader.fail(path, "give either base_url or endpoints, not both")
        return (), None
    if "base_url" in fields:
        endpoint = _endpoint(reader, fields["base_url"], None, join(path, "base_url"))
        if endpoint is None:
            return (), None
        return (endpoint,), endpoint.disabled_reason
    if "endpoints" not in fields:
        reader.fail(join(path, "base_url"), "required (or give endpoints)")
        return (), None

    list_path = join(path, "endpoints")
    endpoints: list[Endpoint] = []
    reasons: list[str] = []
    for index, item in enumerate(reader.items(fields["endpoints"], list_path, "endpoints") or []):
        item_path = join(list_path, index)
        entry = reader.fields(item, item_path, ("base_url", "models"))
        if entry is None:
            continue
        globs = None
        if "models" in entry:
            globs = _patterns(reader, entry["models"], join(item_path, "models"))
        if "base_url" not in entry:
            reader.fail(join(item_path, "base_url"), "required")
            continue
        endpoint = _endpoint(reader, entry["base_url"], globs, join(item_path, "base_url"))
        if endpoint is not None:
            endpoints.append(endpoint)
            if endpoint.disabled_reason:
                reasons.append(f"endpoints[{index}]: {endpoint.disabled_reason}")
    if endpoints and len(reasons) == len(endpoints):
        return tuple(endpoints), "every endpoint is disabled: " + "; ".join(reasons)
    return tuple(endpoints), None


def _endpoint(
    reader: Reader, raw: object, models: tuple[Glob, ...] | None, path: str
) -> Endpoint | None:
    url = reader.string(raw, path)
    if url is None:
        return None
    if not url:
        # The usual way to switch an optional upstream off: `${SOME_BASE:-}` left unset.
        variable = sole_reference(raw) if isinstance(raw, str) else None
        reason = "base_url is empty"
        if variable is not None:
            reason = f"base_url is empty ({describe_absence(variable, reader.environ)})"
        return Endpoint(base_url="", models=models, disabled_reason=reason)
    problem = _url_problem(url)
    if problem is not None:
        # The URL itself is not quoted: it may carry credentials.
        reader.fail(path, problem)
        return None
    return Endpoint(base_url=url.rstrip("/"), models=models)


def _url_problem(url: str) -> str | None:
    expected = "expected an absolute http(s) URL such as https://api.example.com/v1"
    if BLANK_OR_CONTROL.search(url):
        return f"{expected}; it contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return f"{expected}; it has a malformed host or port"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{expected}; the scheme is {parts.scheme!r}" if parts.scheme else expected
    if not parts.hostname:
        return f"{expected}; the host is missing"
    if parts.hostname.startswith(".") or ".." in parts.hostname:
        # What `https://${RESOURCE}.example.com` becomes when RESOURCE is unset.
        return f"{expected}; the host name has an empty label"
    if parts.username is not None or parts.password is not None:
        return f"{expected}; credentials do not belong in it, use keys and auth_header"
    if parts.query or parts.fragment:
        return f"{expected}; no query or fragment: the request path is appended to it"
    return None


def _models(reader: Reader, raw: object, path: str) -> ModelMatcher | None:
    exact: dict[str, str] = {}
    globs: list[ModelRule] = []
    if isinstance(raw, list):
        for index, item in enumerate(reader.items(raw, path, "model names") or []):
            name = _model_name(reader, item, join(path, index))
            if name is None:
                continue
            if _is_glob(name):
                globs.append(ModelRule(name=None, glob=_glob(name), upstream=None))
            elif name in exact:
                reader.fail(join(path, index), f"duplicate model {name!r}")
            else:
                exact[name] = name
    elif isinstance(raw, dict):
        if not raw:
            reader.fail(path, "expected at least one model, got an empty map")
            return None
        for public, value in raw.items():
            if not isinstance(public, str) or not public:
                reader.fail(path, f"model names must be non-empty strings, got {describe(public)}")
                continue
            upstream = _model_name(reader, value, join(path, public))
            if upstream is None:
                continue
            if _is_glob(upstream):
                reader.fail(
                    join(path, public), "the upstream name must be a model name, not a pattern"
                )
            elif _is_glob(public):
                globs.append(ModelRule(name=None, glob=_glob(public), upstream=upstream))
            else:
                exact[public] = upstream
    else:
        reader.fail(
            path,
            "expected a list of model names or patterns, or a map public name -> upstream name,"
            f" got {describe(raw)}",
        )
        return None
    return ModelMatcher(exact=exact, globs=tuple(globs))


def _model_name(reader: Reader, raw: object, path: str) -> str | None:
    name = reader.string(raw, path)
    if name is not None and not name.strip():
        reader.fail(path, "expected a model name, got an empty string")
        return None
    return None if name is None else name.strip()


def _patterns(reader: Reader, raw: object, path: str) -> tuple[Glob, ...] | None:
    """An endpoint's `models`: globs on the upstream name (a plain name matches itself)."""
    items = reader.items(raw, path, "model patterns")
    if items is None:
        return None
    names = [_model_name(reader, item, join(path, index)) for index, item in enumerate(items)]
    return tuple(_glob(name) for name in names if name is not None)


def _is_glob(name: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(name)


def _glob(pattern: str) -> Glob:
    return Glob(pattern=pattern, regex=re.compile(translate(pattern)))


def _headers(reader: Reader, raw: object, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        reader.fail(path, f"expected a map of header name -> value, got {kind(raw)}")
        return ()
    headers: dict[str, tuple[str, str]] = {}
    for name, raw_value in raw.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            reader.fail(path, f"not a valid header name: {describe(name)}")
            continue
        value_path = join(path, name)
        value = reader.string(raw_value, value_path, secret=True)  # may carry a credential
        if value is None:
            continue
        value = value.strip()
        if _HEADER_JUNK.search(value):
            reader.fail(value_path, "must not contain line breaks or control characters")
        elif name.lower() in headers:
            reader.fail(value_path, "duplicate header (names are case-insensitive)")
        elif value:
            # An empty value (an unset optional variable) leaves the header out.
            headers[name.lower()] = (name, value)
    return tuple(headers.values())


def _auth_header(reader: Reader, raw: object, path: str) -> AuthHeader | None:
    text = reader.string(raw, path)
    if text is None:
        return None
    name, _, prefix = text.partition(":")
    name, prefix = name.strip(), prefix.strip()
    if not _TOKEN.fullmatch(name) or _HEADER_JUNK.search(prefix):
        reader.fail(
            path,
            'expected "Header-Name" or "Header-Name: Prefix", e.g. "Authorization: Bearer" or'
            f' "api-key", got {json.dumps(text)}',
        )
        return None
    return AuthHeader(name=name, prefix=f"{prefix} " if prefix else "")


def _paths(reader: Reader, raw: object, path: str) -> frozenset[str] | None:
    paths: set[str] = set()
    for index, item in enumerate(reader.items(raw, path, "API paths") or []):
        text = reader.string(item, join(path, index))
        if text is None:
            continue
        # Written as the path after `/v1/`; `/chat/completions` and `v1/chat/completions` too.
        text = text.strip().lstrip("/")
        text = text.removeprefix("v1/").strip("/")
        if not text:
            reader.fail(join(path, index), "expected an API path such as chat/completions")
        else:
            paths.add(text)
    return frozenset(paths) if paths else None
