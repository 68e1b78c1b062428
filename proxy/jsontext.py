"""JSON that orjson refuses although it is valid: parsed and written by the standard library.

Upstreams written in JavaScript cut text by UTF-16 code unit, so an emoji can arrive as two
events, one ending in the escape `\\ud83d` and the next starting with `\\ude00`. Each event is
valid JSON (RFC 8259 allows a lone escaped surrogate), but orjson refuses to parse it, and
refuses to write the Python string it would give (not encodable as UTF-8). Dropping such an
event would lose the upstream's text (SPEC §6), so:

- `orjson.loads` stays the parser; `salvage`/`loads_refused` run only after it failed, and
  accept what RFC 8259 accepts: no `NaN`/`Infinity`, no number beyond a double's range (which
  the stdlib would turn into infinity), UTF-8 only.
- `dumps_refused` writes what `orjson.dumps` refused as compact JSON with ASCII escapes, so a
  lone surrogate leaves as the same `\\ud83d` escape it arrived as: valid JSON, valid UTF-8.

Pure: no I/O.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

__all__ = ["dumps", "dumps_refused", "loads", "loads_or_none", "loads_refused", "salvage"]


def loads(data: bytes) -> Any:
    """The JSON value of `data`; ValueError if it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return loads_refused(data)


def loads_refused(data: bytes) -> Any:
    """The JSON value of `data` that orjson refused; ValueError if it is not JSON after all."""
    try:
        # UnicodeDecodeError and JSONDecodeError are both ValueErrors.
        return json.loads(data.decode(), parse_constant=_reject_constant, parse_float=_finite)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def loads_or_none(data: bytes) -> Any:
    """The JSON value of one event's data; None if it is not JSON (a malformed event)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return salvage(data)


def salvage(data: bytes) -> Any:
    """`loads_refused`, with None for invalid JSON (as the relay counts a malformed event)."""
    try:
        return loads_refused(data)
    except ValueError:
        return None


def dumps(obj: Any) -> bytes:
    """`obj` as compact JSON: orjson, or the stdlib for what orjson refuses."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return dumps_refused(obj)


def dumps_refused(obj: Any) -> bytes:
    """`obj` as compact JSON when `orjson.dumps` refused it (a lone surrogate, nesting past
    orjson's 254 levels); ValueError if even the stdlib cannot write it (nested too deeply)."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii")
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of range for a double")
    return value
