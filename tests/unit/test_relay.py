"""Tests for `proxy.relay` without sockets: upstream reads come from a list, client writes are
collected. Covers the events orjson cannot take as they are (SPEC §6: none of the upstream's
bytes may be lost; invalid JSON is dropped and counted)."""

from __future__ import annotations

import time
from typing import Any, cast

import orjson

from proxy.attempt import OpenStream
from proxy.classify import Outcome, Verdict
from proxy.downstream import SSEResponse
from proxy.relay import Relay, RelayResult
from proxy.sse import DONE, SSEDecoder
from proxy.streamstate import StreamKind, StreamTracker


def chunk(content: str, finish: str | None = None) -> bytes:
    """A chat chunk whose `content` is written into the JSON as given (escapes included)."""
    finish_json = "null" if finish is None else f'"{finish}"'
    return (
        '{"id":"c1","object":"chat.completion.chunk","model":"m","choices":'
        f'[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":{finish_json}}}]}}'
    ).encode()


class _Content:
    def __init__(self, reads: list[bytes]) -> None:
        self._reads = list(reads)

    async def readany(self) -> bytes:
        return self._reads.pop(0) if self._reads else b""


class _Response:
    def __init__(self, reads: list[bytes]) -> None:
        self.content = _Content(reads)


class _Client:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.done_written = False

    async def write(self, data: bytes) -> None:
        self.written.append(data)


async def relay(reads: list[bytes]) -> tuple[RelayResult, bytes, StreamTracker]:
    opened = OpenStream(Verdict(Outcome.OK), cast(Any, _Response(reads)), SSEDecoder(), [], [])
    client = _Client()
    tracker = StreamTracker(StreamKind.CHAT, 1, usage_expected=False)
    result = await Relay(
        opened,
        cast(SSEResponse, client),
        tracker,
        idle=5.0,
        deadline=time.monotonic() + 5.0,
        drop_usage_chunk=False,
    ).run()
    return result, b"".join(client.written), tracker


async def test_an_emoji_split_into_two_escaped_surrogates_arrives_whole() -> None:
    high, low = chunk("\\ud83d"), chunk("\\ude00")
    reads = [
        b"data: " + chunk("Hi ") + b"\n\ndata: " + high[:20],
        high[20:] + b"\n\n",
        b"data: " + low + b"\n\n",
        b"data: " + chunk("", "stop") + b"\n\n",
    ]
    result, written, tracker = await relay(reads)
    assert (result.cut, result.malformed, result.events) == (None, 0, 4)
    # Each event leaves as exactly the compact JSON it came as, the escape unchanged.
    expected = [chunk("Hi "), high, low, chunk("", "stop")]
    assert written == b"".join(b"data: " + e + b"\n\n" for e in expected) + DONE
    text = "".join(tracker.text)
    assert text.encode("utf-16", "surrogatepass").decode("utf-16") == "Hi \N{GRINNING FACE}"
    assert tracker.choices_finished


async def test_a_surrogate_event_keeps_its_event_name() -> None:
    reads = [b"event: delta\ndata: " + chunk("\\ud83d") + b"\n\n" + b"data: [DONE]\n\n"]
    result, written, _ = await relay(reads)
    assert result.malformed == 0
    assert written.startswith(b"event: delta\ndata: " + chunk("\\ud83d") + b"\n\n")


async def test_invalid_json_is_still_dropped_and_counted() -> None:
    reads = [
        b"data: " + chunk("a") + b"\n\n",
        b"data: {not json\n\ndata: NaN\n\ndata: [1e400]\n\n",
        b"data: " + chunk("", "stop") + b"\n\n",
    ]
    result, written, _ = await relay(reads)
    assert (result.cut, result.malformed, result.events) == (None, 3, 2)
    payloads = [line[6:] for line in written.split(b"\n") if line.startswith(b"data: ")]
    assert payloads[-1] == b"[DONE]"
    for payload in payloads[:-1]:
        orjson.loads(payload)


async def test_json_nested_past_orjsons_writer_is_relayed_not_fatal() -> None:
    deep = b'{"id":"c1","choices":[],"x":' + b"[" * 300 + b"]" * 300 + b"}"
    reads = [b"data: " + deep + b"\n\n", b"data: " + chunk("", "stop") + b"\n\n"]
    result, written, _ = await relay(reads)
    assert (result.cut, result.malformed, result.events) == (None, 0, 2)
    assert written.startswith(b"data: " + deep + b"\n\n")
