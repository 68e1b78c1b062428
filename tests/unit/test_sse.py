"""Tests for `proxy.sse`: the incremental decoder under every way of splitting a stream,
flush at end of stream, the event size limit, and encoder round trips."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import pairwise

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.sse import (
    DONE,
    DONE_DATA,
    SSEDecoder,
    SSEError,
    SSEEvent,
    encode_comment,
    encode_event,
)

BOM = b"\xef\xbb\xbf"


def _chat_chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


CHAT = [
    _chat_chunk({"role": "assistant", "content": ""}),
    _chat_chunk({"content": "Hel"}),
    _chat_chunk({"content": "lo, wörld"}),
    _chat_chunk({}, "stop"),
]
CHAT_STREAM = b"".join(b"data: " + c + b"\n\n" for c in CHAT) + b"data: [DONE]\n\n"
CHAT_EVENTS = [SSEEvent(c) for c in CHAT] + [SSEEvent(b"[DONE]")]

RESPONSES = [
    ("response.created", b'{"type":"response.created","response":{"id":"resp_1"}}'),
    ("response.output_text.delta", b'{"type":"response.output_text.delta","delta":"Hi"}'),
    ("response.output_text.delta", b'{"type":"response.output_text.delta","delta":" there"}'),
    ("response.completed", b'{"type":"response.completed","response":{"id":"resp_1"}}'),
]
RESPONSES_STREAM = b"".join(
    b"event: " + n.encode() + b"\ndata: " + d + b"\n\n" for n, d in RESPONSES
)
RESPONSES_EVENTS = [SSEEvent(d, n) for n, d in RESPONSES]

BIG_VALUE = b'{"x":"' + b"a" * 1_000_000 + b'"}'

SAMPLES: dict[str, tuple[bytes, list[SSEEvent]]] = {
    "openai_chat": (CHAT_STREAM, CHAT_EVENTS),
    "responses_api": (RESPONSES_STREAM, RESPONSES_EVENTS),
    "comments_and_keepalives": (
        b": opening comment\n\n"
        b"data: a\n: keepalive inside an event\n\n"
        b": keepalive\n\n"
        b":\n\n"
        b":no space\n"
        b"data: b\n\n",
        [SSEEvent(b"a"), SSEEvent(b"b")],
    ),
    "multi_line_data": (
        b'data: {\ndata:  "k": 1,\ndata: "v": [1, 2]\ndata: }\n\n'
        b"data: a\ndata:\ndata: b\n\n"
        b"data\ndata\n\n",
        [SSEEvent(b'{\n "k": 1,\n"v": [1, 2]\n}'), SSEEvent(b"a\n\nb"), SSEEvent(b"\n")],
    ),
    "crlf": (
        (CHAT_STREAM + RESPONSES_STREAM).replace(b"\n", b"\r\n"),
        CHAT_EVENTS + RESPONSES_EVENTS,
    ),
    "cr_only": (
        (CHAT_STREAM + RESPONSES_STREAM).replace(b"\n", b"\r"),
        CHAT_EVENTS + RESPONSES_EVENTS,
    ),
    "mixed_line_ends": (
        b"data: 1\r\n\r\n"
        b"data: 2\n\n"
        b"data: 3\r\r"
        b"data: 4\n\r"
        b"event: e\r\ndata: 5\rdata: 6\n\r\n"
        b"data: 7\r\n\n"
        b"\r\r\n\n\r"
        b"data: 8\n\r\n",
        [
            SSEEvent(b"1"),
            SSEEvent(b"2"),
            SSEEvent(b"3"),
            SSEEvent(b"4"),
            SSEEvent(b"5\n6", "e"),
            SSEEvent(b"7"),
            SSEEvent(b"8"),
        ],
    ),
    "one_megabyte_line": (
        b"data: " + BIG_VALUE + b"\n\ndata: [DONE]\n\n",
        [SSEEvent(BIG_VALUE), SSEEvent(b"[DONE]")],
    ),
    "bom": (
        BOM + b"data: a\n\ndata: " + BOM + b"b\n\n",
        [SSEEvent(b"a"), SSEEvent(BOM + b"b")],
    ),
    "bom_then_crlf_comment": (
        BOM + b": hi\r\n\r\ndata: a\r\n\r\n",
        [SSEEvent(b"a")],
    ),
    "no_space_after_colon": (
        b'data:{"a":1}\n\ndata:  two spaces\n\nevent:name\ndata:x\n\ndata:\n\n',
        [SSEEvent(b'{"a":1}'), SSEEvent(b" two spaces"), SSEEvent(b"x", "name"), SSEEvent(b"")],
    ),
    "field_without_colon": (
        b"data\n\ndata\ndata: x\n\nevent\ndata: y\n\nfoo\ndata: z\n\nid\ndata: w\n\n",
        [
            SSEEvent(b""),
            SSEEvent(b"\nx"),
            SSEEvent(b"y"),
            SSEEvent(b"z"),
            SSEEvent(b"w", None, ""),
        ],
    ),
    "ids_and_ignored_fields": (
        b"id: 7\nretry: 3000\nfoo: bar\ndata: x\n\n"
        b"id: a\x00b\ndata: y\n\n"
        b"event: only-a-name\nid: 9\n\n"
        b"event: a\nevent: b\ndata: v\n\n"
        b"event:\ndata: w\n\n",
        [
            SSEEvent(b"x", None, "7"),
            SSEEvent(b"y"),
            SSEEvent(b"v", "b"),
            SSEEvent(b"w"),
        ],
    ),
    "extra_blank_lines": (
        b"\n\n\ndata: a\n\n\n\n\ndata: b\n\n\n",
        [SSEEvent(b"a"), SSEEvent(b"b")],
    ),
    "last_event_without_blank_line": (
        b"data: a\n\nevent: end\ndata: last",
        [SSEEvent(b"a"), SSEEvent(b"last", "end")],
    ),
    "stream_ends_with_cr": (
        b"data: a\r\rdata: b\r",
        [SSEEvent(b"a"), SSEEvent(b"b")],
    ),
}

LARGE = 4096


def decode(chunks: Iterable[bytes]) -> list[SSEEvent]:
    """Feeds every chunk, then flushes; checks what must hold after any stream."""
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.flush()
    assert decoder.pending == 0
    assert all(type(e.data) is bytes for e in events)
    return events


def split_points(stream: bytes) -> list[int]:
    """Every point of a small stream; for a large one, the points near its ends, near
    every line end, and an even spread through the middle."""
    n = len(stream)
    if n <= LARGE:
        return list(range(n + 1))
    points = set(range(64)) | set(range(n - 64, n + 1)) | set(range(0, n, n // 50))
    for i, byte in enumerate(stream):
        if byte in b"\r\n":
            points |= set(range(max(i - 4, 0), min(i + 5, n + 1)))
    return sorted(points)


def point_pairs(stream: bytes) -> Iterator[tuple[int, int]]:
    """Pairs (i, j), i <= j: a grid spread over the stream, plus every one-byte middle
    chunk of a small stream (a lone CR or LF between two reads)."""
    n = len(stream)
    steps = 24 if n <= LARGE else 8
    spread = sorted(set(range(0, n, max(n // steps, 1))) | {1, n - 1, n})
    for a in spread:
        for b in spread:
            if a <= b:
                yield a, b
    if n <= LARGE:
        for i in range(n):
            yield i, i + 1


def bytewise(stream: bytes) -> Iterator[bytes]:
    view = memoryview(stream)
    for i in range(len(stream)):
        yield bytes(view[i : i + 1])


@pytest.mark.parametrize("name", list(SAMPLES))
class TestEveryWayOfSplitting:
    def test_whole(self, name: str) -> None:
        stream, expected = SAMPLES[name]
        assert decode([stream]) == expected

    def test_one_byte_at_a_time(self, name: str) -> None:
        stream, expected = SAMPLES[name]
        assert decode(bytewise(stream)) == expected

    def test_two_chunks_at_every_split_point(self, name: str) -> None:
        stream, expected = SAMPLES[name]
        for i in split_points(stream):
            assert decode([stream[:i], stream[i:]]) == expected, f"split at {i}"

    def test_three_chunks(self, name: str) -> None:
        stream, expected = SAMPLES[name]
        for i, j in point_pairs(stream):
            assert decode([stream[:i], stream[i:j], stream[j:]]) == expected, f"split {i},{j}"


class TestFlush:
    def test_last_event_without_blank_line(self) -> None:
        decoder = SSEDecoder()
        assert decoder.feed(b"data: a\n\ndata: last\n") == [SSEEvent(b"a")]
        assert decoder.flush() == [SSEEvent(b"last")]
        assert decoder.pending == 0

    def test_last_line_without_line_end(self) -> None:
        decoder = SSEDecoder()
        assert decoder.feed(b"data: last") == []
        assert decoder.flush() == [SSEEvent(b"last")]

    def test_truncated_data_is_handed_out_for_the_caller_to_reject(self) -> None:
        decoder = SSEDecoder()
        decoder.feed(b'data: {"choices": [')
        assert decoder.flush() == [SSEEvent(b'{"choices": [')]

    @pytest.mark.parametrize(
        "garbage", [b"garbage", b": a partial comment", b"event: x", b"id: 3\nretry: 5"]
    )
    def test_trailing_garbage_without_newline_yields_nothing(self, garbage: bytes) -> None:
        decoder = SSEDecoder()
        assert decoder.feed(b"data: a\n\n" + garbage) == [SSEEvent(b"a")]
        assert decoder.pending == len(garbage)
        assert decoder.flush() == []
        assert decoder.pending == 0

    def test_empty_decoder_flushes_nothing(self) -> None:
        assert SSEDecoder().flush() == []

    def test_decoder_is_empty_after_flush(self) -> None:
        decoder = SSEDecoder()
        decoder.feed(b"data: one")
        decoder.flush()
        assert decoder.flush() == []
        assert decoder.feed(b"data: two\n\n") == [SSEEvent(b"two")]


class TestPending:
    def test_counts_bytes_of_the_unfinished_event(self) -> None:
        decoder = SSEDecoder()
        assert decoder.feed(b"data: par") == []
        assert decoder.pending == 9
        assert decoder.feed(b"tial\n\ndata: x") == [SSEEvent(b"partial")]
        assert decoder.pending == len(b"data: x")

    def test_zero_after_complete_events(self) -> None:
        decoder = SSEDecoder()
        decoder.feed(CHAT_STREAM)
        assert decoder.pending == 0

    def test_counts_a_held_bom_prefix(self) -> None:
        decoder = SSEDecoder()
        assert decoder.feed(BOM[:2]) == []
        assert decoder.pending == 2


class TestMaxEventBytes:
    LIMIT = 32

    def _feed_all(self, chunks: Iterable[bytes]) -> list[SSEEvent]:
        decoder = SSEDecoder(max_event_bytes=self.LIMIT)
        events: list[SSEEvent] = []
        for chunk in chunks:
            events += decoder.feed(chunk)
        return events + decoder.flush()

    def _splits(self, stream: bytes) -> Iterator[list[bytes]]:
        yield [stream]
        yield list(bytewise(stream))
        for i in range(len(stream) + 1):
            yield [stream[:i], stream[i:]]

    def test_event_of_exactly_the_limit_passes_however_split(self) -> None:
        value = b"x" * (self.LIMIT - len(b"data: "))
        stream = b"data: " + value + b"\n\n"
        for chunks in self._splits(stream):
            assert self._feed_all(chunks) == [SSEEvent(value)]

    def test_inner_line_ends_count(self) -> None:
        # 14 + 1 + 18 bytes: one byte over the limit only through the LF between lines.
        stream = b"data: 12345678\ndata: 123456789012\n\n"
        assert len(stream) - 2 == self.LIMIT + 1
        for chunks in self._splits(stream):
            with pytest.raises(SSEError):
                self._feed_all(chunks)

    def test_event_one_byte_over_fails_in_feed_however_split(self) -> None:
        stream = b"data: " + b"x" * (self.LIMIT - len(b"data: ") + 1) + b"\n\n"
        for chunks in self._splits(stream):
            decoder = SSEDecoder(max_event_bytes=self.LIMIT)
            with pytest.raises(SSEError, match="max_event_bytes=32"):
                for chunk in chunks:
                    decoder.feed(chunk)

    def test_line_that_never_ends_fails_once_past_the_limit(self) -> None:
        decoder = SSEDecoder(max_event_bytes=64)
        decoder.feed(b"data: ")
        for _ in range(5):
            decoder.feed(b"x" * 10)
        assert decoder.pending == 56
        with pytest.raises(SSEError):
            decoder.feed(b"x" * 10)
        assert decoder.pending == 0

    def test_default_limit_holds_a_line_of_several_megabytes(self) -> None:
        value = b"y" * (5 * 1024 * 1024)
        decoder = SSEDecoder()
        events: list[SSEEvent] = []
        for i in range(0, len(value), 65536):
            events += decoder.feed((b"data: " if i == 0 else b"") + value[i : i + 65536])
        events += decoder.feed(b"\n\n")
        assert events == [SSEEvent(value)]

    def test_earlier_events_come_out_before_the_error(self) -> None:
        decoder = SSEDecoder(max_event_bytes=self.LIMIT)
        events = decoder.feed(b"data: a\n\ndata: b\n\ndata: " + b"x" * 100)
        assert events == [SSEEvent(b"a"), SSEEvent(b"b")]
        assert decoder.pending == 0
        with pytest.raises(SSEError):
            decoder.feed(b"")

    def test_error_is_sticky_until_flush_which_reports_it_and_empties(self) -> None:
        decoder = SSEDecoder(max_event_bytes=self.LIMIT)
        with pytest.raises(SSEError):
            decoder.feed(b"data: " + b"x" * 100 + b"\n\n")
        with pytest.raises(SSEError):
            decoder.feed(b"data: fine\n\n")
        with pytest.raises(SSEError):
            decoder.flush()
        assert decoder.feed(b"data: fine\n\n") == [SSEEvent(b"fine")]

    def test_error_is_a_value_error_and_shows_no_data(self) -> None:
        decoder = SSEDecoder(max_event_bytes=self.LIMIT)
        with pytest.raises(ValueError) as caught:
            decoder.feed(b"data: sk-secret-" + b"x" * 100)
        assert "sk-secret" not in str(caught.value)

    @pytest.mark.parametrize("bad", [0, -1])
    def test_limit_must_be_positive(self, bad: int) -> None:
        with pytest.raises(ValueError, match="max_event_bytes must be a positive"):
            SSEDecoder(max_event_bytes=bad)


class TestBom:
    def test_only_a_leading_bom_is_skipped(self) -> None:
        # A BOM after the start is data, not a marker; a field name with one is unknown.
        decoder = SSEDecoder()
        assert decoder.feed(b"data: a\n\n" + BOM + b"data: b\n\n") == [SSEEvent(b"a")]

    def test_bom_prefix_that_is_not_a_bom_is_kept(self) -> None:
        decoder = SSEDecoder()
        assert decoder.feed(b"\xef") == []
        assert decoder.feed(b"data: x\n\n") == []
        assert decoder.feed(b"data: y\n\n") == [SSEEvent(b"y")]


class TestRealisticReads:
    def test_many_events_in_network_sized_reads(self) -> None:
        # A sanity check of the common path, not a benchmark: thousands of events in
        # 4 KiB reads, each event split wherever the read boundary falls.
        chunks = [_chat_chunk({"content": f"token {i}"}) for i in range(5000)]
        stream = b"".join(encode_event(c) for c in chunks) + DONE
        decoder = SSEDecoder()
        events: list[SSEEvent] = []
        for i in range(0, len(stream), 4096):
            events += decoder.feed(stream[i : i + 4096])
            assert decoder.pending < 4096
        assert [e.data for e in events] == [*chunks, DONE_DATA]
        assert decoder.pending == 0


class TestEncode:
    def test_single_line(self) -> None:
        assert encode_event(b'{"a":1}') == b'data: {"a":1}\n\n'

    def test_with_event_name(self) -> None:
        assert encode_event(b"{}", "response.completed") == (
            b"event: response.completed\ndata: {}\n\n"
        )

    def test_empty_event_name_is_left_out(self) -> None:
        assert encode_event(b"{}", "") == b"data: {}\n\n"

    def test_each_line_of_data_gets_its_own_prefix(self) -> None:
        assert encode_event(b"a\nb\r\nc\rd\n") == (
            b"data: a\ndata: b\ndata: c\ndata: d\ndata: \n\n"
        )

    def test_event_name_with_line_break_is_refused(self) -> None:
        for name in ("a\nb", "a\rb"):
            with pytest.raises(ValueError, match="line break"):
                encode_event(b"{}", name)

    def test_done(self) -> None:
        assert encode_event(DONE_DATA) == DONE
        assert decode([DONE]) == [SSEEvent(DONE_DATA)]

    def test_comment(self) -> None:
        assert encode_comment("keepalive") == b": keepalive\n\n"
        assert encode_comment("two\nlines") == b": two\n: lines\n\n"

    def test_comments_between_events_decode_to_nothing(self) -> None:
        stream = encode_comment("keepalive") + encode_event(b"1") + encode_comment("x\r\ny")
        assert decode([stream]) == [SSEEvent(b"1")]


def _as_decoded(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


event_names = st.none() | st.text().filter(lambda s: "\n" not in s and "\r" not in s)


@settings(database=None)
@given(data=st.binary() | st.text().map(str.encode), event=event_names)
def test_encode_event_round_trips(data: bytes, event: str | None) -> None:
    assert decode([encode_event(data, event)]) == [SSEEvent(_as_decoded(data), event or None)]


@settings(database=None)
@given(
    frames=st.lists(st.tuples(st.binary(max_size=40), event_names), max_size=8),
    comment=st.text(max_size=20),
    cuts=st.lists(st.integers(min_value=0), max_size=4),
)
def test_encoded_frames_survive_any_chunking(
    frames: list[tuple[bytes, str | None]], comment: str, cuts: list[int]
) -> None:
    stream = encode_comment(comment) + b"".join(encode_event(d, e) for d, e in frames)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in pairwise(points)]
    assert decode(chunks) == [SSEEvent(_as_decoded(d), e or None) for d, e in frames]
