"""YAML -> frozen, validated `Settings` (the tier table of SPEC §2).

Two steps, as in uvicorn's `Config`: `load_settings` does the I/O (the file, the `.env`
beside it, the process environment, YAML with duplicate keys rejected) and hands the
parsed document to `parse_settings`, which is pure and collects every problem it finds
before raising one `ConfigError`. Each problem names its YAML path:

    providers.groq.timeouts.idle: expected a number, got "x"

Secrets never reach a message: key values, header values and URLs are described, not
quoted. `${VAR}` expansion (see `proxy.envsubst`) applies to string values, never to
map keys: names are identifiers written by the operator.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from enum import Enum
from fnmatch import translate
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml
from dotenv import dotenv_values

from proxy.envsubst import ExpansionError, env_name, expand, keys_from_env, sole_reference
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

_E = TypeVar("_E", bound=Enum)


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


@dataclass(frozen=True, slots=True)
class _Range:
    """What a numeric field accepts: an int or any finite number, above a bound."""

    integer: bool = False
    low: float = 0
    strictly_above: bool = False  # True: `> low`, else `>= low`
    high: float | None = None


_POSITIVE = _Range(strictly_above=True)
_NON_NEGATIVE = _Range()
_COUNT = _Range(integer=True, low=1)
_PORT = _Range(integer=True, low=1, high=65535)
_LISTEN_PORT = _Range(integer=True, low=0, high=65535)  # 0: the OS picks one (tests)

_NESTED: dict[str, tuple[type[Any], dict[str, _Range]]] = {
    "timeouts": (Timeouts, dict.fromkeys(("connect", "first_byte", "idle", "total"), _POSITIVE)),
    "cooldown": (Cooldown, dict.fromkeys(("initial", "max", "auth"), _POSITIVE)),
    "breaker": (BreakerSettings, {"failures": _COUNT, "open_seconds": _POSITIVE}),
}
_SCALARS: dict[str, _Range] = {
    "max_attempts": _COUNT,
    "max_wait": _NON_NEGATIVE,
    "max_concurrent_per_key": _Range(integer=True),
}
# Provider takes these without defaults of its own: the built-ins live here.
_BUILTIN: dict[str, Any] = {
    "max_attempts": 10,
    "max_wait": 5.0,
    "max_concurrent_per_key": 0,
    "rotation": Rotation.BALANCED,
}
_COMMON_FIELDS = (*_NESTED, *_SCALARS, "rotation")
_SERVER_NUMBERS: dict[str, _Range] = {
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

_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)
_SECRET_JUNK = re.compile(r"[\s\x00-\x1f\x7f]")
_HEADER_JUNK = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_GLOB_CHARS = frozenset("*?[")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


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
    text = _read_text(file, source)
    env = {
        **_read_dotenv(file.parent / ".env", source),
        **(os.environ if environ is None else environ),
    }
    document, duplicates = _parse_yaml(text, source)
    try:
        settings = parse_settings(document, env, source)
    except ConfigError as err:
        raise ConfigError(duplicates + err.errors, source) from None
    if duplicates:
        raise ConfigError(duplicates, source)
    return settings


def parse_settings(document: object, environ: Mapping[str, str], source: str = "") -> Settings:
    """Validate an already-parsed YAML document into `Settings`. Pure."""
    reader = _Reader(environ)
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


def _read_text(file: Path, source: str) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{source}: no such file"], source) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{source}: not UTF-8 text"], source) from None
    except OSError as err:
        raise ConfigError([f"{source}: cannot read: {err.strerror or err}"], source) from None


def _read_dotenv(file: Path, source: str) -> dict[str, str]:
    if not file.is_file():
        return {}
    try:
        # interpolate=False: `${...}` inside .env would be resolved against os.environ,
        # bypassing the environment this loader was given. Values are taken literally.
        values = dotenv_values(file, interpolate=False, encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise ConfigError([f"{file}: cannot read this .env file"], source) from None
    return {name: value for name, value in values.items() if value is not None}


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 timestamps: `anthropic-version: 2023-06-01` stays a string."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def _parse_yaml(text: str, source: str) -> tuple[object, list[str]]:
    """The document, and one message per duplicate map key (PyYAML keeps the last silently)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        duplicates = list(_duplicate_keys(node, "", set()))
        return loader.construct_document(node), duplicates
    except yaml.MarkedYAMLError as err:
        # Only the problem and its position: str(err) quotes the offending line, which may
        # hold a key.
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({err.context})" if err.context else ""
        raise ConfigError([f"{source}: {where}{err.problem}{context}"], source) from None
    except yaml.YAMLError:
        raise ConfigError([f"{source}: not a valid YAML document"], source) from None
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node, path: str, seen: set[int]) -> Iterator[str]:
    if id(node) in seen:  # an alias: already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, _join(path, index), seen)
    elif isinstance(node, yaml.MappingNode):
        names: set[tuple[str, str]] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = str(key_node.value)
            if (key_node.tag, key) in names:
                line = key_node.start_mark.line + 1
                if path == "providers":
                    yield f"providers: duplicate name {key!r} (line {line})"
                elif _is_secret_path(path):
                    yield f"{path}: duplicate key (line {line})"
                else:
                    yield f"{path or '(document)'}: duplicate key {key!r} (line {line})"
            names.add((key_node.tag, key))
            yield from _duplicate_keys(value_node, _join(path, key), seen)


def _is_secret_path(path: str) -> bool:
    return re.search(r"(^|\.)(api_)?keys(\[|$)", path) is not None


# --- typed field readers ------------------------------------------------------------------


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not _PLAIN_SEGMENT.fullmatch(key):
        return f"{path}[{json.dumps(key, ensure_ascii=False)}]"
    return f"{path}.{key}" if path else key


def _describe(value: object) -> str:
    """A value for `got ...` in a message (never used for secrets: see `_kind`)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return _kind(value)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, date):
        return "a date"
    return type(value).__name__


class _Reader:
    """Reads raw YAML values into typed ones, recording a message per problem.

    Each reader returns None after recording a problem, so parsing goes on and every
    problem of the file is reported at once.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.errors: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(f"{path or '(document)'}: {message}")

    def fields(
        self, value: object, path: str, known: Sequence[str], *, hide_names: bool = False
    ) -> dict[str, object] | None:
        """A map with only `known` field names. `hide_names`: a stray name may be a secret."""
        if not isinstance(value, dict):
            self.fail(path, f"expected a map, got {_describe(value)}")
            return None
        out: dict[str, object] = {}
        for name, item in value.items():
            if name in known:
                out[name] = item
            elif hide_names:
                self.fail(path, f"unknown field (expected {', '.join(known)})")
            elif not isinstance(name, str):
                self.fail(path, f"field names must be strings, got {_describe(name)}")
            else:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
                self.fail(_join(path, name), f"unknown field; {hint}")
        return out

    def items(self, value: object, path: str, what: str) -> list[object] | None:
        if not isinstance(value, list):
            self.fail(path, f"expected a list of {what}, got {_kind(value)}")
            return None
        if not value:
            self.fail(path, f"expected at least one of {what}, got an empty list")
            return None
        return value

    def string(self, value: object, path: str, *, secret: bool = False) -> str | None:
        """The expanded string. `secret`: say what the value is, never what it holds."""
        if not isinstance(value, str):
            if isinstance(value, date) and not secret:
                self.fail(path, f'expected a string, got a date; quote it: "{value}"')
            else:
                got = _kind(value) if secret else _describe(value)
                self.fail(path, f"expected a string, got {got}")
            return None
        try:
            return expand(value, self.environ)
        except ExpansionError as err:
            self.fail(path, str(err))
            return None

    def number(self, value: object, path: str, rule: _Range) -> int | float | None:
        expected = "an integer" if rule.integer else "a number"
        if isinstance(value, str):
            text = self.string(value, path)
            if text is None:
                return None
            parsed = _parse_number(text.strip(), integer=rule.integer)
            if parsed is None:
                origin = f" (from {json.dumps(value)})" if text != value else ""
                self.fail(path, f"expected {expected}, got {json.dumps(text)}{origin}")
                return None
            value = parsed
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, f"expected {expected}, got {_describe(value)}")
            return None
        if rule.integer and not isinstance(value, int):
            self.fail(path, f"expected an integer, got {_describe(value)}")
            return None
        if not math.isfinite(value):
            self.fail(path, f"expected a finite number, got {value}")
            return None
        problem = _out_of_range(value, rule)
        if problem:
            self.fail(path, problem)
            return None
        return value if rule.integer else float(value)

    def boolean(self, value: object, path: str) -> bool | None:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            text = self.string(value, path)
            if text is None:
                return None
            if text.strip().lower() in _TRUE | _FALSE:
                return text.strip().lower() in _TRUE
            value = text
        self.fail(path, f"expected true or false, got {_describe(value)}")
        return None

    def choice(self, value: object, path: str, enum: type[_E]) -> _E | None:
        options = ", ".join(str(member.value) for member in enum)
        if not isinstance(value, str):
            self.fail(path, f"expected one of {options}, got {_describe(value)}")
            return None
        text = self.string(value, path)
        if text is None:
            return None
        for member in enum:
            if member.value == text.strip():
                return member
        self.fail(path, f"expected one of {options}, got {json.dumps(text)}")
        return None


def _parse_number(text: str, *, integer: bool) -> int | float | None:
    if _INTEGER.fullmatch(text):
        return int(text)
    if not integer and _DECIMAL.fullmatch(text):
        return float(text)
    return None


def _out_of_range(value: float, rule: _Range) -> str | None:
    shown = json.dumps(value)
    if rule.high is not None and not rule.low <= value <= rule.high:
        return f"must be between {rule.low:g} and {rule.high:g}, got {shown}"
    if rule.strictly_above and value <= rule.low:
        return f"must be > {rule.low:g}, got {shown}"
    if value < rule.low:
        return f"must be >= {rule.low:g}, got {shown}"
    return None


# --- server and defaults ------------------------------------------------------------------


def _server(reader: _Reader, raw: object) -> ServerSettings:
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


def _proxy_keys(reader: _Reader, raw: object) -> tuple[Secret, ...]:
    if not isinstance(raw, list):
        reader.fail("server.api_keys", f"expected a list of strings, got {_kind(raw)}")
        return ()
    secrets: dict[str, Secret] = {}
    for index, item in enumerate(raw):
        value = _secret_value(reader, item, _join("server.api_keys", index))
        if value:
            secrets.setdefault(value, Secret(value))
    return tuple(secrets.values())


def _secret_value(reader: _Reader, raw: object, path: str) -> str | None:
    """A credential: expanded and stripped; "" when it expands to nothing."""
    value = reader.string(raw, path, secret=True)
    return None if value is None else _clean_secret(reader, value, path)


def _clean_secret(reader: _Reader, value: str, path: str) -> str | None:
    # Surrounding blanks are copy-paste noise; inside a key they would break the header.
    value = value.strip()
    if _SECRET_JUNK.search(value):
        reader.fail(path, "must not contain whitespace or control characters")
        return None
    return value


def _env_integer(reader: _Reader, variable: str, rule: _Range) -> int | None:
    text = reader.environ[variable].strip()
    value = int(text) if _INTEGER.fullmatch(text) else None
    if value is None or _out_of_range(value, rule):
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


def _common(reader: _Reader, raw: object, path: str) -> dict[str, Any]:
    """The fields shared by `defaults` and providers that are set here (none filled in)."""
    fields = reader.fields({} if raw is None else raw, path, _COMMON_FIELDS) or {}
    return _common_values(reader, fields, path)


def _common_values(reader: _Reader, fields: Mapping[str, object], path: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, (_, rules) in _NESTED.items():
        if name not in fields:
            continue
        section = reader.fields(fields[name], _join(path, name), tuple(rules)) or {}
        nested: dict[str, Any] = {}
        for field_name, raw in section.items():
            number = reader.number(raw, _join(_join(path, name), field_name), rules[field_name])
            if number is not None:
                nested[field_name] = number
        values[name] = nested
    for name, rule in _SCALARS.items():
        if name in fields:
            number = reader.number(fields[name], _join(path, name), rule)
            if number is not None:
                values[name] = number
    if "rotation" in fields:
        rotation = reader.choice(fields["rotation"], _join(path, "rotation"), Rotation)
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
    reader: _Reader, top: Mapping[str, object], defaults: Mapping[str, Any]
) -> tuple[Provider, ...]:
    if "providers" not in top:
        reader.fail("providers", "required: a map of name -> provider")
        return ()
    raw = top["providers"]
    if not isinstance(raw, dict):
        reader.fail("providers", f"expected a map of name -> provider, got {_describe(raw)}")
        return ()
    if not raw:
        reader.fail("providers", "at least one provider is required")
    providers: list[Provider] = []
    for name, body in raw.items():
        if not isinstance(name, str) or not name.strip():
            reader.fail(
                "providers", f"provider names must be non-empty strings, got {_describe(name)}"
            )
            continue
        if "/" in name:
            reader.fail(
                _join("providers", name),
                "a provider name must not contain '/' (pinned models are provider/model)",
            )
            continue
        provider = _provider(reader, name, body, defaults)
        if provider is not None:
            providers.append(provider)
    return tuple(providers)


def _provider(
    reader: _Reader, name: str, body: object, defaults: Mapping[str, Any]
) -> Provider | None:
    path = _join("providers", name)
    fields = reader.fields(body, path, _PROVIDER_FIELDS)
    if fields is None:
        return None
    extras: dict[str, Any] = {}

    tier = 1
    if "tier" in fields:
        number = reader.number(fields["tier"], _join(path, "tier"), _COUNT)
        tier = tier if number is None else int(number)
    priority = f"PROVIDER_PRIORITY_{env_name(name)}"
    if reader.environ.get(priority, "").strip():
        override = _env_integer(reader, priority, _COUNT)
        tier = tier if override is None else override

    endpoints, endpoint_reason = _endpoints(reader, fields, path)
    models = None
    if "models" in fields:
        models = _models(reader, fields["models"], _join(path, "models"))
    elif not any(endpoint.models is not None for endpoint in endpoints) and (
        "base_url" in fields or "endpoints" in fields
    ):
        reader.fail(_join(path, "models"), "required (or give endpoint models)")
    keys, key_reason = _keys(reader, fields, path)

    if "headers" in fields:
        extras["headers"] = _headers(reader, fields["headers"], _join(path, "headers"))
    if "auth_header" in fields:
        auth_header = _auth_header(reader, fields["auth_header"], _join(path, "auth_header"))
        if auth_header is not None:
            extras["auth_header"] = auth_header
    if "weight" in fields:
        weight = reader.number(fields["weight"], _join(path, "weight"), _POSITIVE)
        if weight is not None:
            extras["weight"] = weight
    if "paths" in fields:
        extras["paths"] = _paths(reader, fields["paths"], _join(path, "paths"))
    if "continuation" in fields:
        continuation = reader.choice(
            fields["continuation"], _join(path, "continuation"), Continuation
        )
        if continuation is not None:
            extras["continuation"] = continuation
    enabled = True
    if "enabled" in fields:
        enabled = reader.boolean(fields["enabled"], _join(path, "enabled")) is not False

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
    reader: _Reader, fields: Mapping[str, object], path: str
) -> tuple[tuple[Endpoint, ...], str | None]:
    """The provider's endpoints, and why it is disabled when none of them is usable."""
    if "base_url" in fields and "endpoints" in fields:
        reader.fail(path, "give either base_url or endpoints, not both")
        return (), None
    if "base_url" in fields:
        endpoint = _endpoint(reader, fields["base_url"], None, _join(path, "base_url"))
        if endpoint is None:
            return (), None
        return (endpoint,), endpoint.disabled_reason
    if "endpoints" not in fields:
        reader.fail(_join(path, "base_url"), "required (or give endpoints)")
        return (), None

    list_path = _join(path, "endpoints")
    endpoints: list[Endpoint] = []
    reasons: list[str] = []
    for index, item in enumerate(reader.items(fields["endpoints"], list_path, "endpoints") or []):
        item_path = _join(list_path, index)
        entry = reader.fields(item, item_path, ("base_url", "models"))
        if entry is None:
            continue
        globs = None
        if "models" in entry:
            globs = _patterns(reader, entry["models"], _join(item_path, "models"))
        if "base_url" not in entry:
            reader.fail(_join(item_path, "base_url"), "required")
            continue
        endpoint = _endpoint(reader, entry["base_url"], globs, _join(item_path, "base_url"))
        if endpoint is not None:
            endpoints.append(endpoint)
            if endpoint.disabled_reason:
                reasons.append(f"endpoints[{index}]: {endpoint.disabled_reason}")
    if endpoints and len(reasons) == len(endpoints):
        return tuple(endpoints), "every endpoint is disabled: " + "; ".join(reasons)
    return tuple(endpoints), None


def _endpoint(
    reader: _Reader, raw: object, models: tuple[Glob, ...] | None, path: str
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


def _models(reader: _Reader, raw: object, path: str) -> ModelMatcher | None:
    exact: dict[str, str] = {}
    globs: list[ModelRule] = []
    if isinstance(raw, list):
        for index, item in enumerate(reader.items(raw, path, "model names") or []):
            name = _model_name(reader, item, _join(path, index))
            if name is None:
                continue
            if _is_glob(name):
                globs.append(ModelRule(name=None, glob=_glob(name), upstream=None))
            elif name in exact:
                reader.fail(_join(path, index), f"duplicate model {name!r}")
            else:
                exact[name] = name
    elif isinstance(raw, dict):
        if not raw:
            reader.fail(path, "expected at least one model, got an empty map")
            return None
        for public, value in raw.items():
            if not isinstance(public, str) or not public:
                reader.fail(path, f"model names must be non-empty strings, got {_describe(public)}")
                continue
            upstream = _model_name(reader, value, _join(path, public))
            if upstream is None:
                continue
            if _is_glob(upstream):
                reader.fail(
                    _join(path, public), "the upstream name must be a model name, not a pattern"
                )
            elif _is_glob(public):
                globs.append(ModelRule(name=None, glob=_glob(public), upstream=upstream))
            else:
                exact[public] = upstream
    else:
        reader.fail(
            path,
            "expected a list of model names or patterns, or a map public name -> upstream name,"
            f" got {_describe(raw)}",
        )
        return None
    return ModelMatcher(exact=exact, globs=tuple(globs))


def _model_name(reader: _Reader, raw: object, path: str) -> str | None:
    name = reader.string(raw, path)
    if name is not None and not name.strip():
        reader.fail(path, "expected a model name, got an empty string")
        return None
    return None if name is None else name.strip()


def _patterns(reader: _Reader, raw: object, path: str) -> tuple[Glob, ...] | None:
    """An endpoint's `models`: globs on the upstream name (a plain name matches itself)."""
    items = reader.items(raw, path, "model patterns")
    if items is None:
        return None
    names = [_model_name(reader, item, _join(path, index)) for index, item in enumerate(items)]
    return tuple(_glob(name) for name in names if name is not None)


def _is_glob(name: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(name)


def _glob(pattern: str) -> Glob:
    return Glob(pattern=pattern, regex=re.compile(translate(pattern)))


def _keys(
    reader: _Reader, fields: Mapping[str, object], path: str
) -> tuple[tuple[Key, ...], str | None]:
    """The provider's keys (`keys` first, then `keys_from_env`), and why it is disabled."""
    ring = _KeyRing(reader)
    problems: list[str] = []
    if "keys" in fields:
        problems.append(_declared_keys(reader, ring, fields["keys"], _join(path, "keys")))
    if "keys_from_env" in fields:
        problem = _env_keys(reader, ring, fields["keys_from_env"], _join(path, "keys_from_env"))
        problems.extend([problem] if problem else [])
    optional = False
    if "keys_optional" in fields:
        optional = bool(reader.boolean(fields["keys_optional"], _join(path, "keys_optional")))
    if ring.keys or optional or not problems:
        return tuple(ring.keys), None
    return (), "no key: " + " and ".join(problems)


class _KeyRing:
    """A provider's keys in order: names unique, each distinct value once."""

    def __init__(self, reader: _Reader) -> None:
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


def _declared_keys(reader: _Reader, ring: _KeyRing, raw: object, path: str) -> str:
    """Add `keys` entries to `ring`; returns what to say when none of them is set."""
    if not isinstance(raw, list):
        reader.fail(path, f'expected a list of keys, got {_kind(raw)}; e.g. keys: ["${{MY_KEY}}"]')
        raw = []
    unset: list[str] = []
    for index, item in enumerate(raw):
        # Default names follow the declared position, so dropping #1 keeps #2 as #2.
        name, raw_value = f"#{index + 1}", item
        name_path = value_path = _join(path, index)
        if isinstance(item, dict):
            entry = reader.fields(item, name_path, ("value", "name"), hide_names=True) or {}
            value_path, name_path = _join(name_path, "value"), _join(name_path, "name")
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


def _env_keys(reader: _Reader, ring: _KeyRing, raw: object, path: str) -> str | None:
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


def _headers(reader: _Reader, raw: object, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        reader.fail(path, f"expected a map of header name -> value, got {_kind(raw)}")
        return ()
    headers: dict[str, tuple[str, str]] = {}
    for name, raw_value in raw.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            reader.fail(path, f"not a valid header name: {_describe(name)}")
            continue
        value_path = _join(path, name)
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


def _auth_header(reader: _Reader, raw: object, path: str) -> AuthHeader | None:
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


def _paths(reader: _Reader, raw: object, path: str) -> frozenset[str] | None:
    paths: set[str] = set()
    for index, item in enumerate(reader.items(raw, path, "API paths") or []):
        text = reader.string(item, _join(path, index))
        if text is None:
            continue
        # Written as the path after `/v1/`; `/chat/completions` and `v1/chat/completions` too.
        text = text.strip().lstrip("/")
        text = text.removeprefix("v1/").strip("/")
        if not text:
            reader.fail(_join(path, index), "expected an API path such as chat/completions")
        else:
            paths.add(text)
    return frozenset(paths) if paths else None
