"""Environment expansion for configuration strings, and the env-variable naming rules.

Pure: every function takes the environment as a mapping and never reads `os.environ`.

Grammar of a string scalar:

    ${VAR}            the value of VAR, "" when unset
    ${VAR:-default}   the value of VAR, or `default` when VAR is unset or empty;
                      `default` may itself hold references, but no `}`
    $${               a literal `${`
    $VAR, $ alone     left untouched (only the braced form is a reference)

Anything else that starts with `${` (a bad name, `${VAR-x}`, a missing `}`) raises
`ExpansionError`, whose message never quotes the text: it may hold a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ExpansionError(ValueError):
    """A malformed `${...}` reference. The message says what is wrong, never the text."""


@dataclass(frozen=True, slots=True)
class _Reference:
    name: str
    default: tuple[str | _Reference, ...] | None  # None: no `:-` part


_Part = str | _Reference


def expand(text: str, environ: Mapping[str, str]) -> str:
    """`text` with every `${VAR}` / `${VAR:-default}` replaced from `environ`."""
    return _render(_parse(text), environ)


def references(text: str) -> tuple[str, ...]:
    """The names of the variables `text` refers to at top level, in order.

    Empty when the text holds no reference, i.e. it is taken literally.
    """
    return tuple(part.name for part in _parse(text) if isinstance(part, _Reference))


def sole_reference(text: str) -> str | None:
    """The variable name when `text` is exactly one reference (`${VAR}`, `${VAR:-x}`)."""
    parts = _parse(text)
    if len(parts) == 1 and isinstance(parts[0], _Reference):
        return parts[0].name
    return None


def keys_from_env(name: str, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """`[(variable, value)]` for `name` then every `name_<n>`, ordered by n as a number.

    Gaps in the numbering are fine; variables whose value is empty are left out.
    """
    numbered = re.compile(re.escape(name) + r"_([0-9]+)")
    found: list[tuple[int, str]] = []
    for variable in environ:
        match = numbered.fullmatch(variable)
        if match is not None:
            found.append((int(match.group(1)), variable))
    # Ties (KEY_1 and KEY_01) fall back to the name so the order never depends on the
    # environment's iteration order.
    found.sort()
    ordered = [name, *(variable for _, variable in found)]
    return [(variable, environ[variable]) for variable in ordered if environ.get(variable)]


def env_name(provider: str) -> str:
    """The `<NAME>` of `PROVIDER_PRIORITY_<NAME>`: upper case, anything not A-Z/0-9 -> `_`."""
    return re.sub(r"[^A-Z0-9]", "_", provider.upper())


def describe_absence(variable: str, environ: Mapping[str, str]) -> str:
    """Why a reference to `variable` expanded to nothing: `VAR unset` or `VAR empty`."""
    return f"{variable} unset" if variable not in environ else f"{variable} empty"


def _render(parts: tuple[_Part, ...], environ: Mapping[str, str]) -> str:
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        value = environ.get(part.name, "")
        if not value and part.default is not None:
            value = _render(part.default, environ)
        out.append(value)
    return "".join(out)


def _parse(text: str) -> tuple[_Part, ...]:
    return _parse_until(text, 0, inside_default=False)[0]


def _parse_until(text: str, pos: int, *, inside_default: bool) -> tuple[tuple[_Part, ...], int]:
    """Parse from `pos` to the end, or (inside a default) to its closing `}`.

    Returns the parts and the index just past what was consumed (past the `}`).
    """
    parts: list[_Part] = []
    literal: list[str] = []
    while pos < len(text):
        if text.startswith("$${", pos):
            literal.append("${")
            pos += 3
        elif text.startswith("${", pos):
            if literal:
                parts.append("".join(literal))
                literal.clear()
            reference, pos = _parse_reference(text, pos + 2)
            parts.append(reference)
        elif inside_default and text[pos] == "}":
            if literal:
                parts.append("".join(literal))
            return tuple(parts), pos + 1
        else:
            literal.append(text[pos])
            pos += 1
    if inside_default:
        raise ExpansionError("unterminated ${...} reference: missing '}'")
    if literal:
        parts.append("".join(literal))
    return tuple(parts), pos


def _parse_reference(text: str, pos: int) -> tuple[_Reference, int]:
    """Parse what follows `${`: `NAME}` or `NAME:-default}`."""
    match = _NAME.match(text, pos)
    if match is None:
        raise ExpansionError("bad ${...} reference: expected a variable name after '${'")
    name, pos = match.group(), match.end()
    if text.startswith("}", pos):
        return _Reference(name, None), pos + 1
    if text.startswith(":-", pos):
        default, pos = _parse_until(text, pos + 2, inside_default=True)
        return _Reference(name, default), pos
    if pos >= len(text):
        raise ExpansionError("unterminated ${...} reference: missing '}'")
    raise ExpansionError("bad ${...} reference: only ${VAR} and ${VAR:-default} are supported")
