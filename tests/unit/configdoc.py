"""Builders of config documents and checks of their errors, shared by the config tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from proxy.config import ConfigError, parse_settings
from proxy.settings import Provider, Settings

SECRET = "sk-live-0123456789abcdef"


def provider(**fields: Any) -> dict[str, Any]:
    return {"base_url": "https://api.example.com/v1", "models": ["m"], **fields}


def document(
    providers: Mapping[str, Any] | None = None,
    *,
    server: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {"providers": dict(providers or {"p": provider()})}
    if server is not None:
        doc["server"] = dict(server)
    if defaults is not None:
        doc["defaults"] = dict(defaults)
    return doc


def parse(doc: object, **env: str) -> Settings:
    return parse_settings(doc, env)


def only(settings: Settings) -> Provider:
    assert len(settings.providers) == 1
    return settings.providers[0]


def errors(doc: object, **env: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(doc, env)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return caught.value.errors


def error(doc: object, **env: str) -> str:
    found = errors(doc, **env)
    assert len(found) == 1, found
    return found[0]
