"""Relaying a committed stream to the client, re-chunked, until it ends one way or another.

Each upstream read is decoded into events; each event's JSON is re-serialised compactly with
orjson and re-emitted as one complete `data: ...\\n\\n` frame; all frames of one read go out in
one write. Valid JSON that orjson refuses (a lone escaped surrogate: half an emoji from an
upstream that cuts text by UTF-16 unit) goes through `proxy.jsontext` instead of being lost.

The relay ends in exactly one of these ways (SPEC §6):

    finished   every choice has a finish reason (or `[DONE]` came): `[DONE]` for APIs that use it
    cut        reset, idle timeout, error event, or a clean end before the finish: the caller
               decides (continuation, or an error event and no `[DONE]`)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp

from proxy import jsontext
from proxy.attempt import OpenStream
from proxy.classify import (
    BAD_RESPONSE_VERDICT,
    CONNECT_ERROR_VERDICT,
    TIMEOUT_VERDICT,
    Verdict,
)
from proxy.downstream import SSEResponse
from proxy.jsontext import loads_or_none
from proxy.sse import DONE, DONE_DATA, SSEError, SSEEvent, encode_event
from proxy.streamstate import StreamKind, StreamTracker, is_error_event
from proxy.timing import ReadTimer
from proxy.upstream import take_buffered

# After every choice has finished, an upstream that keeps the connection open is not waited on
# longer than this (SPEC §6).
LINGER_AFTER_FINISH = 1.0


class Cut(StrEnum):
    """Why a stream stopped before its answer was complete (interruption `reason` labels)."""

    RESET = "reset"
    IDLE_TIMEOUT = "idle_timeout"
    ERROR_EVENT = "error_event"
    TRUNCATED = "truncated"
    SHUTDOWN = "shutdown"


_CUT_VERDICTS = {
    Cut.RESET: CONNECT_ERROR_VERDICT,
    Cut.IDLE_TIMEOUT: TIMEOUT_VERDICT,
    Cut.ERROR_EVENT: BAD_RESPONSE_VERDICT,
    Cut.TRUNCATED: BAD_RESPONSE_VERDICT,
}


@dataclass(slots=True)
class RelayResult:
    cut: Cut | None  # None: the answer is complete and `[DONE]` (if used) was written
    malformed: int  # events dropped: invalid JSON (or nested too deeply to write again)
    events: int  # data events written to the client
    error_detail: str = ""


class Relay:
    """Writes one upstream stream's events to the client response."""

    def __init__(
        self,
        opened: OpenStream,
        client: SSEResponse,
        tracker: StreamTracker,
        idle: float,
        deadline: float,
        drop_usage_chunk: bool,
        rewrite_id: str | None = None,
        skip_role_only: bool = False,
    ) -> None:
        self._opened = opened
        self._client = client
        self._tracker = tracker
        self._idle = idle
        self._deadline = deadline
        self._drop_usage_chunk = drop_usage_chunk
        # A continuation speaks under the original stream's id, and its opening role-only
        # chunk would repeat one the client already has.
        self._rewrite_id = rewrite_id
        self._skip_role_only = skip_role_only
        self._done_seen = False
        self._cut: Cut | None = None
        self._detail = ""
        self.malformed = 0
        self.events = 0

    async def run(self) -> RelayResult:
        opened = self._opened
        frames: list[bytes] = []
        self._render(opened.events, opened.parsed, frames)
        if frames:
            await self._client.write(b"".join(frames))
        if self._cut is None and not self._done_seen:
            await self._pump()
        # `[DONE]` ends chat and completion streams always, other APIs only when they sent it.
        if self._cut is None and (self._tracker.kind.uses_done or self._done_seen):
            self._client.done_written = True
            await self._client.write(DONE)
        return RelayResult(self._cut, self.malformed, self.events, self._detail)

    async def _pump(self) -> None:
        timer = ReadTimer()
        try:
            await self._pump_with(timer)
        finally:
            timer.close()

    async def _pump_with(self, timer: ReadTimer) -> None:
        content = self._opened.response.content
        while True:
            finished = self._tracker.finished
            wait = LINGER_AFTER_FINISH if finished else self._idle
            timer.start(min(self._deadline, time.monotonic() + wait))
            try:
                chunk = await content.readany()
            except asyncio.CancelledError:
                if not timer.expired():
                    raise
                if not finished:
                    self._cut, self._detail = Cut.IDLE_TIMEOUT, "upstream went silent"
                return
            except aiohttp.ClientPayloadError:
                timer.stop()
                if not await self._decode_and_write(take_buffered(content), final=True):
                    return
                if not (self._tracker.finished or self._done_seen) and self._cut is None:
                    self._cut, self._detail = Cut.RESET, "upstream connection lost"
                return
            except (aiohttp.ClientError, OSError):
                if not finished:
                    self._cut, self._detail = Cut.RESET, "upstream connection lost"
                return
            timer.stop()
            if not await self._decode_and_write(chunk, final=not chunk):
                return
            if not chunk:  # clean end of the body
                if self._cut is None and not self._done_seen and not self._ended_complete():
                    self._cut, self._detail = Cut.TRUNCATED, "upstream ended before finishing"
                return
            if self._cut is not None or self._done_seen:
                return

    async def _decode_and_write(self, chunk: bytes, *, final: bool) -> bool:
        """Decode one read (and the rest, when `final`) and relay it; False if the stream
        broke (an event over the decoder's size limit: the answer cannot go on)."""
        decoder = self._opened.decoder
        try:
            events = decoder.feed(chunk) if chunk else []
            if final:
                events += decoder.flush()
        except SSEError:
            self._cut, self._detail = Cut.RESET, "broken event stream"
            return False
        await self._write_decoded(events)
        return True

    def _ended_complete(self) -> bool:
        # A clean end after every finish reason is complete: `[DONE]` is added. For APIs
        # whose grammar we do not know, a clean end is all there is to go by.
        return self._tracker.choices_finished or self._tracker.kind is StreamKind.OTHER

    async def _write_decoded(self, events: list[SSEEvent]) -> None:
        if not events:
            return
        frames: list[bytes] = []
        self._render(events, None, frames)
        if frames:
            await self._client.write(b"".join(frames))

    def _render(self, events: list[SSEEvent], parsed: list[Any] | None, out: list[bytes]) -> None:
        # Runs once per event: everything that does not change between events is looked
        # up once per read instead.
        if self._cut is not None or self._done_seen:
            return
        tracker = self._tracker
        observe = tracker.observe
        dumps = jsontext.dumps
        rewrites = self._drop_usage_chunk or self._skip_role_only or self._rewrite_id is not None
        written = 0
        for i, event in enumerate(events):
            data = event.data
            if data == DONE_DATA:
                self._done_seen = True
                if not tracker.finished and not tracker.choices_finished and tracker.kind.uses_done:
                    # `[DONE]` without a finish reason: the answer was cut, not completed.
                    self._cut, self._detail = Cut.TRUNCATED, "upstream ended before finishing"
                break
            obj = parsed[i] if parsed is not None else loads_or_none(data)
            if obj is None:
                self.malformed += 1
                continue
            if is_error_event(obj):
                self._cut, self._detail = Cut.ERROR_EVENT, "upstream sent an error event"
                break
            name = event.event
            observe(obj, name)
            if rewrites:
                if self._drop_usage_chunk and _is_bare_usage_chunk(obj):
                    continue
                if self._skip_role_only and _is_role_only_chunk(obj):
                    continue
                if self._rewrite_id is not None and isinstance(obj, dict) and "id" in obj:
                    obj["id"] = self._rewrite_id
            try:
                payload = dumps(obj)
            except ValueError:  # nested past what even the stdlib writes
                self.malformed += 1
                continue
            if name is None:
                # `encode_event` inlined: compact JSON holds no line break.
                out.append(b"data: " + payload + b"\n\n")
            else:
                out.append(encode_event(payload, name))
            written += 1
        self.events += written


def _is_role_only_chunk(obj: Any) -> bool:
    """A chunk that only announces `role` (no text, no tool call, no finish reason)."""
    if not isinstance(obj, dict):
        return False
    choices = obj.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return False
    choice = choices[0]
    delta = choice.get("delta")
    if choice.get("finish_reason") is not None or not isinstance(delta, dict):
        return False
    return not any(v for k, v in delta.items() if k != "role")


def cut_verdict(cut: Cut) -> Verdict | None:
    """How a mid-stream cut counts against the provider (None: not its fault)."""
    return _CUT_VERDICTS.get(cut)


def _is_bare_usage_chunk(obj: Any) -> bool:
    """The extra chunk `stream_options.include_usage` adds: usage set, no choices."""
    return isinstance(obj, dict) and obj.get("usage") is not None and not obj.get("choices")
