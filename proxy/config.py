"""YAML -> frozen, validated `Settings` (the tier table of SPEC §2).

Two steps, as in uvicorn's `Config`: `load_settings` does the I/O (the file, the `.env`
beside it, the process environment, YAML with duplicate keys rejected) and hands the
parsed document to `parse_settings`, which is pure and collects every problem it finds
before raising one `ConfigError`. Each problem names its YAML path:

    providers.groq.timeouts.idle: expected a number, got "x"

Secrets never reach a message: key values, header values and URLs are described, not
quoted. `${VAR}` expansion (see `proxy.envsubst`) applies to string values, never to
map keys: names are identifiers written by the operator.

This module holds the document's top level, the `server` section and the map of
providers; reading the file is `proxy.configfile`'s job, reading one typed value
`proxy.configread`'s, building one provider and the `defaults` it inherits
`proxy.configprovider`'s.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from proxy.configfile import FileProblem, parse_yaml, read_dotenv, read_text
from proxy.configprovider import read_defaults, read_provider
from proxy.configread import COUNT, NON_NEGATIVE, POSITIVE, Range, Reader, describe, join, kind
from proxy.settings import Provider, Secret, ServerSettings, Settings


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

_PORT = Range(integer=True, low=1, high=65535)
_LISTEN_PORT = Range(integer=True, low=0, high=65535)  # 0: the OS picks one (tests)
_SERVER_NUMBERS: dict[str, Range] = {
    "port": _LISTEN_PORT,
    "max_body_bytes": COUNT,
    "max_response_bytes": COUNT,
    "shutdown_grace_seconds": NON_NEGATIVE,
    "sse_keepalive_seconds": POSITIVE,
}
_SERVER_FIELDS = ("host", "api_keys", "allow_unauthenticated", *_SERVER_NUMBERS)


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
    defaults = read_defaults(reader, top["defaults"]) if "defaults" in top else {}
    providers = _providers(reader, top, defaults)
    if reader.errors:
        raise ConfigError(reader.errors, source)
    return Settings(server=server, providers=providers, source=source)


# --- server -------------------------------------------------------------------------------


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
        port = reader.env_integer("PROXY_PORT", _PORT)
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
        value = reader.credential(item, join("server.api_keys", index))
        if value:
            secrets.setdefault(value, Secret(value))
    return tuple(secrets.values())


def _is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


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
        provider = read_provider(reader, name, body, defaults)
        if provider is not None:
            providers.append(provider)
    return tuple(providers)
