"""Tests for `proxy.jsontext`: valid JSON that orjson refuses is read and written again; what
is not JSON stays refused."""

from __future__ import annotations

import orjson
import pytest

from proxy.jsontext import dumps_refused, loads, loads_refused, salvage

HALF_EMOJI = b'{"choices":[{"index":0,"delta":{"content":"\\ud83d"}}]}'


def test_a_lone_escaped_surrogate_is_valid_json_that_orjson_refuses() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(HALF_EMOJI)
    obj = loads(HALF_EMOJI)
    assert obj["choices"][0]["delta"]["content"] == "\ud83d"
    assert salvage(HALF_EMOJI) == obj


def test_it_is_written_back_as_the_same_compact_escape() -> None:
    obj = loads_refused(HALF_EMOJI)
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(obj)
    assert dumps_refused(obj) == HALF_EMOJI
    dumps_refused(obj).decode("utf-8")  # valid UTF-8 on the wire


def test_the_two_halves_make_the_emoji_again() -> None:
    first = loads(b'"\\ud83d"')
    second = loads(b'"\\ude00"')
    joined = (first + second).encode("utf-16", "surrogatepass").decode("utf-16")
    assert joined == "\N{GRINNING FACE}"


def test_other_non_ascii_text_is_escaped_but_means_the_same() -> None:
    obj = {"content": "\ud83d é ✓"}
    written = dumps_refused(obj)
    assert written == b'{"content":"\\ud83d \\u00e9 \\u2713"}'
    assert loads(written) == obj


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b"",
        b"NaN",
        b'{"x": Infinity}',
        b"[-Infinity]",
        b"1e400",  # valid grammar, but no double holds it: the stdlib would say inf
        b'{"x": -1e400}',
        b'"\xed\xa0\xbd"',  # a surrogate encoded as raw UTF-8 bytes: not UTF-8
        b'"\xff"',
        b"\xef\xbb\xbf{}",
        b'"a\x01"',
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_what_is_not_json_stays_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        loads(data)
    assert salvage(data) is None


def test_the_fast_path_is_orjson() -> None:
    data = b'{"a":[1,2.5,"\xc3\xa9",null,true]}'
    assert loads(data) == orjson.loads(data)


def test_nesting_orjson_reads_but_cannot_write_is_written_by_the_stdlib() -> None:
    deep = b"[" * 300 + b"]" * 300
    obj = orjson.loads(deep)
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(obj)
    assert dumps_refused(obj) == deep


def test_nesting_nothing_can_write_is_a_value_error() -> None:
    obj = orjson.loads(b"[" * 1024 + b"]" * 1024)
    with pytest.raises(ValueError):
        dumps_refused(obj)
