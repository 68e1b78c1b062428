"""YAML -> frozen, validated `Settings` (the tier table of SPEC §2).

Two steps, as in uvicorn's `Config`: `load_settings` does the I/O (the file, the `.env`
beside it, the process environment, YAML with duplicate keys rejected) and hands the
parsed document to `parse_settings`, which is pure and collects every problem it finds
before raising one `ConfigError`. Each problem names its YAML path:

    providers.groq.timeouts.idle: expected a number, got "x"

Secrets never reach a message: key values, header values and URLs are described, not
quoted. `${VAR}` expansion (see `proxy.envsubst`) applies to string values, never to
map keys: names are identifiers written by the operator.

This module holds the schema and builds `Settings` from it; reading the file is
`proxy.configfile`'s job, reading one typed value is `proxy.configread`'s.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from fnmatch import translate
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxy.configfile import FileProblem, parse_yaml, read_dotenv, read_text
from proxy.configread import INTEGER, Range, Reader, describe, join, kind, out_of_range
from proxy.envsubst import env_name, keys_from_env, sole_reference
from proxy.settings import (
    AuthHeader,
    BreakerSettings,
    Continuation,
    Cooldown,
    Endpoint,
    Glob,
    Key,
    ModelMatcher,
    ModelRule,
    Provider,
    Rotation,
    Secret,
    ServerSettings,
    Settings,
    Timeouts,
)


class ConfigError(Exception):
    """Every problem found in a configuration, each as `yaml.path: message`.

    `str()` is the problems joined by newlines. `source` is the file, when there is one.
    """

    def __init__(self, errors: Sequence[str], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


# --- the schema ---------------------------------------------------------------------------

_POSITIVE = Range(strictly_above=True)
_NON_NEGATIVE = Range()
_COUNT = Range(integer=True, low=1)
_PORT = Range(integer=True, low=1, high=65535)
_LISTEN_PORT = Range(integer=True, low=0, high=65535)  # 0: the OS picks one (tests)

_NESTED: dict[str, tuple[type[Any], dict[str, Range]]] = {
    "timeouts": (Timeouts, dict.fromkeys(("connect", "first_byte", "idle", "total"), _POSITIVE)),
    "cooldown": (Cooldown, dict.fromkeys(("initial", "max", "auth"), _POSITIVE)),
    "breaker": (BreakerSettings, {"failures": _COUNT, "open_seconds": _POSITIVE}),
}
_SCALARS: dict[str, Range] = {
    "max_attempts": _COUNT,
    "max_wait": _NON_NEGATIVE,
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
_SERVER_NUMBERS: dict[str, Range] = {
    "port": _LISTEN_PORT,
    "max_body_bytes": _COUNT,
    "shutdown_grace_seconds": _NON_NEGATIVE,
    "sse_keepalive_seconds": _POSITIVE,
}
_SERVER_FIELDS = ("host", "api_keys", "allow_unauthenticated", *_SERVER_NUMBERS)
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

_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)
_SECRET_JUNK = re.compile(r"[\s\x00-\x1f\x7f]")
_HEADER_JUNK = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_GLOB_CHARS = frozenset("*?[")


# --- loading ------------------------------------------------------------------------------


def load_settings(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> Settings:
    """Read, parse and validate a config file; `.env` beside it fills in the environment.

    `environ` defaults to `os.environ` and wins over the `.env` file. Raises `ConfigError`
    for every problem, including an unreadable file and a YAML syntax error.
    """
    file = Path(path)
    source = str(file)
    try:
        text = read_text(file)
        env = {
            **read_dotenv(file.parent / ".env"),
            **(os.environ if environ is None else environ),
        }
        document, duplicates = parse_yaml(text, source)
    except FileProblem as problem:
        raise ConfigError([str(problem)], source) from None
    try:
        settings = parse_settings(document, env, source)
    except ConfigError as err:
        raise ConfigError(duplicates + err.errors, source) from None
    if duplicates:
        raise ConfigError(duplicates, source)
    return settings


def parse_settings(document: object, environ: Mapping[str, str], source: str = "") -> Settings:
    """Validate an already-parsed YAML document into `Settings`. Pure."""
    reader = Reader(environ)
    top = reader.fields(
        {} if document is None else document, "", ("server", "defaults", "providers")
    )
    if top is None:
        raise ConfigError(reader.errors, source)
    server = _server(reader, top.get("server"))
    defaults = _common(reader, top["defaults"], "defaults") if "defaults" in top else {}
    providers = _providers(reader, top, defaults)
    if reader.errors:
        raise ConfigError(reader.errors, source)
    return Settings(server=server, providers=providers, source=source)


# --- server and defaults ------------------------------------------------------------------


def _server(reader: Reader, raw: object) -> ServerSettings:
    fields = reader.fields({} if raw is None else raw, "server", _SERVER_FIELDS) or {}
    values: dict[str, Any] = {}
    for name, rule in _SERVER_NUMBERS.items():
        if name in fields:
            number = reader.number(fields[name], f"server.{name}", rule)
            if number is not None:
                values[name] = number
    if "host" in fields:
        host = reader.string(fields["host"], "server.host")
        if host is not None and not host.strip():
            reader.fail("server.host", "must not be empty")
        elif host is not None:
            values["host"] = host.strip()
    if "allow_unauthenticated" in fields:
        allow = reader.boolean(fields["allow_unauthenticated"], "server.allow_unauthenticated")
        if allow is not None:
            values["allow_unauthenticated"] = allow
    errors_before = len(reader.errors)
    if "api_keys" in fields:
        values["api_keys"] = _proxy_keys(reader, fields["api_keys"])
    keys_invalid = len(reader.errors) > errors_before
    if reader.environ.get("PROXY_HOST", "").strip():
        values["host"] = reader.environ["PROXY_HOST"].strip()
    if reader.environ.get("PROXY_PORT", "").strip():
        port = _env_integer(reader, "PROXY_PORT", _PORT)
        if port is not None:
            values["port"] = port
    server = replace(ServerSettings(), **values)
    open_to_all = not server.api_keys and not server.allow_unauthenticated
    # After a bad api_keys entry the message above says enough.
    if open_to_all and not keys_invalid and not _is_loopback(server.host):
        reader.fail(
            "server.api_keys",
            f"empty; refusing to listen on {server.host} without proxy keys; set "
            "server.api_keys (PROXY_API_KEY) or allow_unauthenticated: true",
        )
    return server


def _proxy_keys(reader: Reader, raw: object) -> tuple[Secret, ...]:
    if not isinstance(raw, list):
        reader.fail("server.api_keys", f"expected a list of strings, got {kind(raw)}")
        return ()
    secrets: dict[str, Secret] = {}
    for index, item in enumerate(raw):
        value = _secret_value(reader, item, join("server.api_keys", index))
        if value:
            secrets.setdefault(value, Secret(value))
    return tuple(secrets.values())


def _secret_value(reader: Reader, raw: object, path: str) -> str | None:
    """A credential: expanded and stripped; "" when it expands to nothing."""
    value = reader.string(raw, path, secret=True)
    return None if value is None else _clean_secret(reader, value, path)


def _clean_secret(reader: Reader, value: str, path: str) -> str | None:
    # Surrounding blanks are copy-paste noise; inside a key they would break the header.
    value = value.strip()
    if _SECRET_JUNK.search(value):
        reader.fail(path, "must not contain whitespace or control characters")
        return None
    return value


def _env_integer(reader: Reader, variable: str, rule: Range) -> int | None:
    text = reader.environ[variable].strip()
    value = int(text) if INTEGER.fullmatch(text) else None
    if value is None or out_of_range(value, rule):
        bounds = f"between {rule.low:g} and {rule.high:g}" if rule.high else f">= {rule.low:g}"
        reader.fail(variable, f"expected an integer {bounds}, got {json.dumps(text)}")
        return None
    return value


def _is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _common(reader: Reader, raw: object, path: str) -> dict[str, Any]:
    """The fields shared by `defaults` and providers that are set here (none filled in)."""
    fields = reader.fields({} if raw is None else raw, path, _COMMON_FIELDS) or {}
    return _common_values(reader, fields, path)


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


def _providers(
    reader: Reader, top: Mapping[str, object], defaults: Mapping[str, Any]
) -> tuple[Provider, ...]:
    if "providers" not in top:
        reader.fail("providers", "required: a map of name -> provider")
        return ()
    raw = top["providers"]
    if not isinstance(raw, dict):
        reader.fail("providers", f"expected a map of name -> provider, got {describe(raw)}")
        return ()
    if not raw:
        reader.fail("providers", "at least one provider is required")
    providers: list[Provider] = []
    for name, body in raw.items():
        if not isinstance(name, str) or not name.strip():
            reader.fail(
                "providers", f"provider names must be non-empty strings, got {describe(name)}"
            )
            continue
        if "/" in name:
            reader.fail(
                join("providers", name),
                "a provider name must not contain '/' (pinned models are provider/model)",
            )
            continue
        provider = _provider(reader, name, body, defaults)
        if provider is not None:
            providers.append(provider)
    return tuple(providers)


def _provider(
    reader: Reader, name: str, body: object, defaults: Mapping[str, Any]
) -> Provider | None:
    path = join("providers", name)
    fields = reader.fields(body, path, _PROVIDER_FIELDS)
    if fields is None:
        return None
    extras: dict[str, Any] = {}

    tier = 1
    if "tier" in fields:
        number = reader.number(fields["tier"], join(path, "tier"), _COUNT)
        tier = tier if number is None else int(number)
    priority = f"PROVIDER_PRIORITY_{env_name(name)}"
    if reader.environ.get(priority, "").strip():
        override = _env_integer(reader, priority, _COUNT)
        tier = tier if override is None else override

    endpoints, endpoint_reason = _endpoints(reader, fields, path)
    models = None
    if "models" in fields:
        models = _models(reader, fields["models"], join(path, "models"))
    elif not any(endpoint.models is not None for endpoint in endpoints) and (
        "base_url" in fields or "endpoints" in fields
    ):
        reader.fail(join(path, "models"), "required (or give endpoint models)")
    keys, key_reason = _keys(reader, fields, path)

    if "headers" in fields:
        extras["headers"] = _headers(reader, fields["headers"], join(path, "headers"))
    if "auth_header" in fields:
        auth_header = _auth_header(reader, fields["auth_header"], join(path, "auth_header"))
        if auth_header is not None:
            extras["auth_header"] = auth_header
    if "weight" in fields:
        weight = reader.number(fields["weight"], join(path, "weight"), _POSITIVE)
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
            reason = f"base_url is empty ({_absence(variable, reader.environ)})"
        return Endpoint(base_url="", models=models, disabled_reason=reason)
    problem = _url_problem(url)
    if problem is not None:
        # The URL itself is not quoted: it may carry credentials.
        reader.fail(path, problem)
        return None
    return Endpoint(base_url=url.rstrip("/"), models=models)


def _url_problem(url: str) -> str | None:
    expected = "expected an absolute http(s) URL such as https://api.example.com/v1"
    if _SECRET_JUNK.search(url):
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


def _keys(
    reader: Reader, fields: Mapping[str, object], path: str
) -> tuple[tuple[Key, ...], str | None]:
    """The provider's keys (`keys` first, then `keys_from_env`), and why it is disabled."""
    ring = _KeyRing(reader)
    problems: list[str] = []
    if "keys" in fields:
        problems.append(_declared_keys(reader, ring, fields["keys"], join(path, "keys")))
    if "keys_from_env" in fields:
        problem = _env_keys(reader, ring, fields["keys_from_env"], join(path, "keys_from_env"))
        problems.extend([problem] if problem else [])
    optional = False
    if "keys_optional" in fields:
        optional = bool(reader.boolean(fields["keys_optional"], join(path, "keys_optional")))
    if ring.keys or optional or not problems:
        return tuple(ring.keys), None
    return (), "no key: " + " and ".join(problems)


class _KeyRing:
    """A provider's keys in order: names unique, each distinct value once."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.keys: list[Key] = []
        self.names: set[str] = set()
        self.values: set[str] = set()

    def add(self, name: str, value: str, name_path: str) -> None:
        if name in self.names:
            self.reader.fail(name_path, f"duplicate key name {name!r}")
            return
        self.names.add(name)
        # The same value twice (KEY and KEY_1 alike in a .env) is one key, not two.
        if value and value not in self.values:
            self.values.add(value)
            self.keys.append(Key(name=name, secret=Secret(value)))


def _declared_keys(reader: Reader, ring: _KeyRing, raw: object, path: str) -> str:
    """Add `keys` entries to `ring`; returns what to say when none of them is set."""
    if not isinstance(raw, list):
        reader.fail(path, f'expected a list of keys, got {kind(raw)}; e.g. keys: ["${{MY_KEY}}"]')
        raw = []
    unset: list[str] = []
    for index, item in enumerate(raw):
        # Default names follow the declared position, so dropping #1 keeps #2 as #2.
        name, raw_value = f"#{index + 1}", item
        name_path = value_path = join(path, index)
        if isinstance(item, dict):
            entry = reader.fields(item, name_path, ("value", "name"), hide_names=True) or {}
            value_path, name_path = join(name_path, "value"), join(name_path, "name")
            if "value" not in entry:
                reader.fail(value_path, "required")
                continue
            raw_value = entry["value"]
            if "name" in entry:
                given = (reader.string(entry["name"], name_path) or "").strip()
                if not given:
                    if isinstance(entry["name"], str):
                        reader.fail(name_path, "must not be empty")
                    continue
                name = given
        value = _secret_value(reader, raw_value, value_path)
        if value is None:
            continue
        variable = sole_reference(raw_value) if isinstance(raw_value, str) else None
        if not value and variable is not None:
            unset.append(_absence(variable, reader.environ))
        ring.add(name, value, name_path)
    return "every entry of keys is empty" + (f" ({', '.join(unset)})" if unset else "")


def _env_keys(reader: Reader, ring: _KeyRing, raw: object, path: str) -> str | None:
    """Add `NAME`, `NAME_<n>` from the environment to `ring`; returns what to say when unset."""
    variable = reader.string(raw, path, secret=True)
    if variable is None:
        return None
    if not _ENV_VAR.fullmatch(variable):
        # Not quoted: a key pasted here by mistake would land in the log.
        reader.fail(path, "expected the name of an environment variable, such as GROQ_API_KEY")
        return None
    for name, raw_value in keys_from_env(variable, reader.environ):
        value = _clean_secret(reader, raw_value, f"{path} ({name})")
        if value is not None:
            ring.add(name, value, path)
    return f"{variable}, {variable}_<n> unset"


def _absence(variable: str, environ: Mapping[str, str]) -> str:
    return f"{variable} unset" if variable not in environ else f"{variable} empty"


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
