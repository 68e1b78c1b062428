"""Reading around aiohttp's pending payload error (SPEC §6: no upstream byte may be lost).

When an upstream writes its last events and closes at once, aiohttp may record a payload
error with bytes still buffered; `readany()` then raises before handing them out.
"""

from __future__ import annotations

from unittest import mock

import aiohttp
import pytest
from aiohttp.streams import StreamReader

from proxy.upstream import take_buffered


def _reader_that_failed_with(data: bytes) -> StreamReader:
    loop = mock.Mock()
    reader = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=loop)
    reader.feed_data(data)
    reader.set_exception(aiohttp.ClientPayloadError("Response payload is not completed"))
    return reader


async def test_aiohttp_raises_the_payload_error_before_the_buffered_bytes() -> None:
    # Why the relay reads around the error. Should aiohttp start handing the bytes out
    # first, this fails, and `take_buffered` becomes a harmless no-op to retire.
    with pytest.raises(aiohttp.ClientPayloadError):
        await _reader_that_failed_with(b"data: {}\n\n").readany()


def test_take_buffered_returns_the_bytes_left_once() -> None:
    reader = _reader_that_failed_with(b'data: {"last": true}\n\n')
    assert take_buffered(reader) == b'data: {"last": true}\n\n'
    assert take_buffered(reader) == b""


def test_take_buffered_of_an_empty_reader_is_empty() -> None:
    assert take_buffered(_reader_that_failed_with(b"")) == b""
