"""What a relayed stream has said so far: finished or not, token usage, the text sent.

Pure: fed the parsed JSON of each event in order. The relay asks it whether an upstream that
stopped talking had finished its answer (then the client gets `[DONE]`) or was cut short (then
the client gets an error event, never a truncated answer presented as complete, SPEC §6).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class StreamKind(StrEnum):
    """Which API's stream grammar applies; decides `[DONE]` and what "finished" means."""

    CHAT = "chat/completions"
    COMPLETION = "completions"
    RESPONSES = "responses"
    OTHER = "other"

    @classmethod
    def for_path(cls, path: str) -> StreamKind:
        if path == "chat/completions":
            return cls.CHAT
        if path == "completions":
            return cls.COMPLETION
        if path == "responses":
            return cls.RESPONSES
        return cls.OTHER

    @property
    def uses_done(self) -> bool:
        """Chat and completion streams end with `data: [DONE]`; Responses streams do not."""
        return self in (StreamKind.CHAT, StreamKind.COMPLETION)


_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class StreamTracker:
    """Follows one stream's events: finish reasons per choice, usage, first choice's text."""

    __slots__ = (
        "_choices_expected",
        "_finished",
        "_responses_done",
        "completion_tokens",
        "id",
        "kind",
        "prompt_tokens",
        "text",
        "tool_call_seen",
        "usage_expected",
        "usage_seen",
        "usage_updates",
    )

    def __init__(self, kind: StreamKind, choices_expected: int, usage_expected: bool) -> None:
        self.kind = kind
        self._choices_expected = max(1, choices_expected)
        self.usage_expected = usage_expected
        self._finished: set[int] = set()
        self._responses_done = False
        self.usage_seen = False
        self.usage_updates = 0  # usage chunks seen: tells a continuation's usage from earlier
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.id: str | None = None
        self.text: list[str] = []  # first choice's content pieces, for continuation
        self.tool_call_seen = False

    @property
    def finished(self) -> bool:
        """Every choice has a finish reason (and usage arrived, when it was asked for)."""
        if self.kind is StreamKind.RESPONSES:
            return self._responses_done
        if self.kind is StreamKind.OTHER:
            return False
        done = len(self._finished) >= self._choices_expected
        return done and (self.usage_seen or not self.usage_expected)

    @property
    def choices_finished(self) -> bool:
        return len(self._finished) >= self._choices_expected

    def observe(self, obj: Any, event: str | None) -> None:
        if not isinstance(obj, dict):
            return
        if self.id is None:
            ident = obj.get("id")
            if isinstance(ident, str):
                self.id = ident
        if self.kind is StreamKind.RESPONSES:
            kind = event or obj.get("type")
            if kind in _RESPONSES_FINAL:
                self._responses_done = True
                self._take_usage(obj.get("response", {}).get("usage"), responses=True)
            return
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    self._observe_choice(choice)
        usage = obj.get("usage")
        if usage:
            self._take_usage(usage, responses=False)

    def _observe_choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        if choice.get("finish_reason") is not None and isinstance(index, int):
            self._finished.add(index)
        if index != 0:
            return
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.text.append(content)
            if delta.get("tool_calls") or delta.get("function_call"):
                self.tool_call_seen = True
        else:
            text = choice.get("text")
            if isinstance(text, str) and text:
                self.text.append(text)

    def _take_usage(self, usage: Any, *, responses: bool) -> None:
        if not isinstance(usage, dict):
            return
        prompt = usage.get("input_tokens" if responses else "prompt_tokens")
        completion = usage.get("output_tokens" if responses else "completion_tokens")
        if isinstance(prompt, int):
            self.prompt_tokens = prompt
        if isinstance(completion, int):
            self.completion_tokens = completion
        self.usage_seen = True
        self.usage_updates += 1


def is_error_event(obj: Any) -> bool:
    """An upstream error delivered as a stream event instead of an HTTP status."""
    if not isinstance(obj, dict):
        return False
    if "error" in obj and obj.get("error") is not None and "choices" not in obj:
        return True
    return obj.get("type") == "error"
