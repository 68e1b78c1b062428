"""A provider's API keys, from `keys` and `keys_from_env`, in the order they are tried.

A key that is unset in this environment is left out rather than rejected: the shipped
`providers.yaml` names keys for every provider and must still load when only some are
set. A provider left with no key is then disabled, and the reason names the variables
to set (`no key: GROQ_API_KEY, GROQ_API_KEY_<n> unset`), never a value. A malformed
entry, by contrast, is a configuration error like any other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from proxy.configread import Reader, join, kind
from proxy.envsubst import describe_absence, keys_from_env, sole_reference
from proxy.settings import Key, Secret

_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_keys(
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
        value = reader.credential(raw_value, value_path)
        if value is None:
            continue
        variable = sole_reference(raw_value) if isinstance(raw_value, str) else None
        if not value and variable is not None:
            unset.append(describe_absence(variable, reader.environ))
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
        value = reader.clean_credential(raw_value, f"{path} ({name})")
        if value is not None:
            ring.add(name, value, path)
    return f"{variable}, {variable}_<n> unset"
