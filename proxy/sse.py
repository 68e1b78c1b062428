"""Incremental Server-Sent Events decoding and encoding (SPEC §6).

`SSEDecoder` turns the raw bytes of an upstream `text/event-stream`, in reads of any
size, into `SSEEvent`s, following the WHATWG "event stream interpretation": lines end
with CRLF, LF or CR; a blank line dispatches the event; `:` starts a comment; `data`,
`event` and `id` are kept, other fields ignored; a block without `data` yields nothing.

It splits events itself rather than reading lines from the transport, so a `data:` line
of several megabytes is fine; `max_event_bytes` bounds what one event may hold.

`encode_event`, `encode_comment` and `DONE` build the frames the proxy sends downstream.

The module is pure: no I/O, no clock, no event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DONE",
    "DONE_DATA",
    "SSEDecoder",
    "SSEError",
    "SSEEvent",
    "encode_comment",
    "encode_event",
]

DONE: bytes = b"data: [DONE]\n\n"
DONE_DATA: bytes = b"[DONE]"

_BOM = b"\xef\xbb\xbf"
_LF = 0x0A
_CR = 0x0D
_SPACE = 0x20


class SSEError(ValueError):
    """An upstream event, or one of its lines, grew past the decoder's `max_event_bytes`."""


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event.

    `data` is the event's `data:` lines joined with `\\n`; `event` is its `event:` name
    (None when absent or empty); `id` is the `id:` field given in this event's own block.
    """

    data: bytes
    event: str | None = None
    id: str | None = None


class SSEDecoder:
    """Feeds upstream bytes in, takes complete events out; one decoder per stream.

    Line ends are normalised to LF as each read arrives, so everything after that works
    on LF alone. Bytes of an unfinished event are held until its blank line arrives; the
    common read of whole single-line `data:` events is sliced straight out of the read.

    Sizes (`pending`, `max_event_bytes`) count bytes after that normalisation, and an
    event's size excludes the blank line that ends it.

    After an `SSEError`, `feed` keeps raising it; `flush` raises it once more and leaves
    the decoder empty.
    """

    __slots__ = ("_buf", "_error", "_head", "_max", "_scan_from", "_skip_lf", "_started")

    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        if max_event_bytes < 1:
            raise ValueError(
                f"max_event_bytes must be a positive number of bytes, got {max_event_bytes}"
            )
        self._max = max_event_bytes
        self._buf = bytearray()
        self._head = b""
        self._started = False
        self._skip_lf = False
        self._scan_from = 0
        self._error: str | None = None

    @property
    def pending(self) -> int:
        """Bytes buffered, not yet part of a returned event."""
        return len(self._head) + len(self._buf)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events completed by `chunk`, in order."""
        if self._error is not None:
            raise SSEError(self._error)
        if not self._started:
            # The BOM itself may arrive split across reads: hold a prefix of it until
            # there are enough bytes to tell.
            head = self._head + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._head = head
                return []
            self._started = True
            self._head = b""
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
        if self._skip_lf and chunk:
            # The previous read ended with CR: an LF here completes that same CRLF.
            self._skip_lf = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._skip_lf = chunk[-1] == _CR
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

        buf = self._buf
        if not buf:
            return self._split(chunk, 0)
        buf += chunk
        # Only the tail can hold a new event end: the held bytes were searched already.
        if buf.find(b"\n\n", self._scan_from) == -1:
            self._scan_from = len(buf) - 1
            if len(buf) > self._max and _open_event_size(buf) > self._max:
                return self._overflow([], len(buf))
            return []
        data = bytes(buf)
        buf.clear()
        return self._split(data, self._scan_from)

    def flush(self) -> list[SSEEvent]:
        """At end of stream: the event left without its blank line, if any.

        An upstream that closes right after its last event without the blank line still
        delivers that event. The decoder is empty afterwards.
        """
        error = self._error
        rest = bytes(self._buf)
        self._reset()
        if error is not None:
            raise SSEError(error)
        if not rest:
            return []
        if rest[-1] == _LF:
            rest = rest[:-1]
        event = _parse_block(rest)
        return [] if event is None else [event]

    def _split(self, data: bytes, search_from: int) -> list[SSEEvent]:
        """Dispatches every complete event of `data`, which starts at a line start."""
        events: list[SSEEvent] = []
        limit = self._max
        pos = 0
        n = len(data)
        while pos < n:
            if data[pos] == _LF:
                # A blank line with no event open: nothing to dispatch.
                pos += 1
                continue
            end = data.find(b"\n\n", max(pos, search_from))
            if end == -1:
                break
            if end - pos > limit:
                return self._overflow(events, end - pos)
            if data.startswith(b"data:", pos) and data.find(b"\n", pos, end) == -1:
                # The common event, one `data:` line: slice its value out directly.
                start = pos + 5
                if start < end and data[start] == _SPACE:
                    start += 1
                events.append(SSEEvent(data[start:end]))
            else:
                event = _parse_block(data[pos:end])
                if event is not None:
                    events.append(event)
            pos = end + 2
        if pos < n:
            rest = memoryview(data)[pos:]
            if len(rest) > limit and _open_event_size(rest) > limit:
                return self._overflow(events, len(rest))
            self._buf += rest
            self._scan_from = n - pos - 1
        return events

    def _overflow(self, events: list[SSEEvent], size: int) -> list[SSEEvent]:
        """Drops the oversized event; reports it now, or on the next call when this one
        still has earlier, complete events to hand out."""
        self._buf.clear()
        self._scan_from = 0
        self._error = f"an SSE event of at least {size} bytes exceeds max_event_bytes={self._max}"
        if events:
            return events
        raise SSEError(self._error)

    def _reset(self) -> None:
        self._buf.clear()
        self._head = b""
        self._started = False
        self._skip_lf = False
        self._scan_from = 0
        self._error = None


def _parse_block(block: bytes) -> SSEEvent | None:
    """The event made by the LF-separated lines of `block`, or None without a `data` field."""
    data: list[bytes] = []
    event: str | None = None
    event_id: str | None = None
    # A comment line (`: text`) is a field with an empty name, so it falls through as
    # an unknown field without a test of its own.
    for line in block.split(b"\n"):
        colon = line.find(b":")
        if colon == -1:
            name, value = line, b""
        else:
            name = line[:colon]
            skip = 2 if line[colon + 1 : colon + 2] == b" " else 1
            value = line[colon + skip :]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace") or None
        elif name == b"id" and b"\0" not in value:
            event_id = value.decode("utf-8", "replace")
    if not data:
        return None
    return SSEEvent(b"\n".join(data), event, event_id)


def _open_event_size(held: bytearray | memoryview) -> int:
    """The size of an unfinished event: a final LF may be the first half of its end."""
    return len(held) - 1 if held[-1] == _LF else len(held)


def _split_lines(data: bytes) -> list[bytes]:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")


def encode_event(data: bytes, event: str | None = None) -> bytes:
    """One complete frame: optional `event: <name>\\n`, then `data: <data>\\n\\n`.

    `data` is normally compact single-line JSON; if it holds line breaks anyway, each
    line gets its own `data:` prefix so the frame stays valid (a CR or CRLF comes back
    from a decoder as LF). An event name cannot hold a line break: ValueError.
    """
    if b"\n" in data or b"\r" in data:
        body = b"".join([b"data: " + line + b"\n" for line in _split_lines(data)]) + b"\n"
    else:
        body = b"".join((b"data: ", data, b"\n\n"))
    if not event:
        return body
    if "\n" in event or "\r" in event:
        raise ValueError("an SSE event name cannot contain a line break")
    return b"".join((b"event: ", event.encode(), b"\n", body))


def encode_comment(text: str) -> bytes:
    """A comment frame, `: <text>\\n\\n`, as sent for keepalives; one `:` per line."""
    lines = _split_lines(text.encode())
    return b"".join([b": " + line + b"\n" for line in lines]) + b"\n"
