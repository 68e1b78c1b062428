"""Typed field readers: raw YAML values -> ints, floats, booleans, strings, enums, credentials.

`Reader` checks one value at a time against what its field accepts, expands `${VAR}`
references in strings, and records one message per problem (naming the YAML path)
instead of raising, so that `proxy.config` reports every problem of a file at once.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from enum import Enum
from typing import TypeVar

from proxy.envsubst import ExpansionError, expand

_E = TypeVar("_E", bound=Enum)


@dataclass(frozen=True, slots=True)
class Range:
    """What a numeric field accepts: an int or any finite number, above a bound."""

    integer: bool = False
    low: float = 0
    strictly_above: bool = False  # True: `> low`, else `>= low`
    high: float | None = None


# The rules most numeric fields follow.
POSITIVE = Range(strictly_above=True)
NON_NEGATIVE = Range()
COUNT = Range(integer=True, low=1)

#: Whitespace or a control character: never part of a credential or a URL.
BLANK_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")

# An integer as written in YAML or in an environment variable (sign allowed).
_INTEGER = re.compile(r"[+-]?[0-9]+")
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def join(path: str, key: str | int) -> str:
    """`path` one level down: `a.b`, `a[0]`, or `a["odd key"]` when `key` needs quoting."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not _PLAIN_SEGMENT.fullmatch(key):
        return f"{path}[{json.dumps(key, ensure_ascii=False)}]"
    return f"{path}.{key}" if path else key


def describe(value: object) -> str:
    """A value for `got ...` in a message (never used for secrets: see `kind`)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return kind(value)


def kind(value: object) -> str:
    """What sort of value this is ("a string", "a list"...), without showing the value."""
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


class Reader:
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
            self.fail(path, f"expected a map, got {describe(value)}")
            return None
        out: dict[str, object] = {}
        for name, item in value.items():
            if name in known:
                out[name] = item
            elif hide_names:
                self.fail(path, f"unknown field (expected {', '.join(known)})")
            elif not isinstance(name, str):
                self.fail(path, f"field names must be strings, got {describe(name)}")
            else:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
                self.fail(join(path, name), f"unknown field; {hint}")
        return out

    def items(self, value: object, path: str, what: str) -> list[object] | None:
        if not isinstance(value, list):
            self.fail(path, f"expected a list of {what}, got {kind(value)}")
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
                got = kind(value) if secret else describe(value)
                self.fail(path, f"expected a string, got {got}")
            return None
        try:
            return expand(value, self.environ)
        except ExpansionError as err:
            self.fail(path, str(err))
            return None

    def number(self, value: object, path: str, rule: Range) -> int | float | None:
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
            self.fail(path, f"expected {expected}, got {describe(value)}")
            return None
        if rule.integer and not isinstance(value, int):
            self.fail(path, f"expected an integer, got {describe(value)}")
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
        self.fail(path, f"expected true or false, got {describe(value)}")
        return None

    def choice(self, value: object, path: str, enum: type[_E]) -> _E | None:
        options = ", ".join(str(member.value) for member in enum)
        if not isinstance(value, str):
            self.fail(path, f"expected one of {options}, got {describe(value)}")
            return None
        text = self.string(value, path)
        if text is None:
            return None
        for member in enum:
            if member.value == text.strip():
                return member
        self.fail(path, f"expected one of {options}, got {json.dumps(text)}")
        return None

    def credential(self, value: object, path: str) -> str | None:
        """A credential: expanded and stripped; "" when it expands to nothing."""
        text = self.string(value, path, secret=True)
        return None if text is None else self.clean_credential(text, path)

    def clean_credential(self, text: str, path: str) -> str | None:
        """An already expanded credential, stripped; None (and a message) when unusable."""
        # Surrounding blanks are copy-paste noise; inside a key they would break the header.
        text = text.strip()
        if BLANK_OR_CONTROL.search(text):
            self.fail(path, "must not contain whitespace or control characters")
            return None
        return text

    def env_integer(self, variable: str, rule: Range) -> int | None:
        """The integer in the environment variable `variable`, which must be set."""
        text = self.environ[variable].strip()
        value = int(text) if _INTEGER.fullmatch(text) else None
        if value is None or _out_of_range(value, rule):
            bounds = f"between {rule.low:g} and {rule.high:g}" if rule.high else f">= {rule.low:g}"
            self.fail(variable, f"expected an integer {bounds}, got {json.dumps(text)}")
            return None
        return value


def _parse_number(text: str, *, integer: bool) -> int | float | None:
    if _INTEGER.fullmatch(text):
        return int(text)
    if not integer and _DECIMAL.fullmatch(text):
        return float(text)
    return None


def _out_of_range(value: float, rule: Range) -> str | None:
    """What is wrong with `value` under `rule`'s bounds, or None when it is within them."""
    shown = json.dumps(value)
    if rule.high is not None and not rule.low <= value <= rule.high:
        return f"must be between {rule.low:g} and {rule.high:g}, got {shown}"
    if rule.strictly_above and value <= rule.low:
        return f"must be > {rule.low:g}, got {shown}"
    if value < rule.low:
        return f"must be >= {rule.low:g}, got {shown}"
    return None
