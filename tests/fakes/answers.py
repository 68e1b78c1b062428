"""What the fake upstream answers: the scripted behaviours and the default answers.

`Reply`, `Stream`, `Reset` and `Hang` are what a test scripts; `SeenRequest` is the
request they answer. Without a script the fake builds its answer here from the request's
path (`default_body`, `default_stream`): chat and text completions, the Responses API,
embeddings and the model list, with usage counted in words. `choose_automatically` and
`choose_by_model` pick a behaviour per request (tests, and the standalone process).
The builders are public so that tests can script realistic streams of their own.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson


@dataclass
class Reply:
    """A plain HTTP answer. With `json` and `body` both None: the default body for the path."""

    status: int = 200
    json: object | None = None
    body: bytes | None = None  # raw bytes (HTML, invalid JSON); Content-Type defaults to JSON
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the headers


@dataclass
class Stream:
    """An SSE answer.

    `events`: dict (or any JSON value) -> `data: <json>\\n\\n`; str -> `data: <str>\\n\\n`;
    bytes -> written raw, one write each (an empty bytes event writes nothing: a pause of
    `delay`). None -> the default stream for the path. `end`: "close" ends cleanly,
    "reset" aborts the TCP connection (RST) with no chunked terminator, "hang" stays
    open and silent until the client goes away.
    """

    events: list[object] | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    first_delay: float = 0.0  # before the first event; the headers go out at once
    header_delay: float = 0.0  # before the headers
    delay: float = 0.0  # before each later event, [DONE] included
    done: bool = True  # append `data: [DONE]` (never to the default Responses stream)
    end: Literal["close", "reset", "hang"] = "close"

    def __post_init__(self) -> None:
        if self.end not in ("close", "reset", "hang"):
            raise ValueError(f'Stream.end must be "close", "reset" or "hang", got {self.end!r}')


@dataclass
class Reset:
    """Abort the connection (RST) before any response bytes."""


@dataclass
class Hang:
    """Read the request, then never answer (until the client goes away)."""


Behaviour = Reply | Stream | Reset | Hang


@dataclass
class SeenRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str] = field(repr=False)  # lower-case names
    body: bytes = field(repr=False)
    json: Any
    key: str | None = field(repr=False)  # Bearer token, else `api-key`, else `x-api-key`
    at: float  # time.monotonic() when received
    disconnected: bool = False

    @property
    def model(self) -> str:
        model = self.json.get("model") if isinstance(self.json, dict) else None
        return model if isinstance(model, str) else "fake-model"

    @property
    def wants_stream(self) -> bool:
        return isinstance(self.json, dict) and self.json.get("stream") is True


# --- Default answers ------------------------------------------------------------------


def sse_event(data: object, *, event: str | None = None) -> bytes:
    """One SSE event: a str is sent as is, anything else as compact JSON."""
    payload = data if isinstance(data, str) else orjson.dumps(data).decode()
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _words(value: object) -> int:
    """A deterministic stand-in for a token count."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        return sum(_words(v) for v in value.values())
    return 0


def _prompt_tokens(seen: SeenRequest) -> int:
    if not isinstance(seen.json, dict):
        return 1
    parts = [seen.json.get(k) for k in ("messages", "prompt", "input")]
    return max(1, sum(_words(p) for p in parts))


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _include_usage(seen: SeenRequest) -> bool:
    options = seen.json.get("stream_options") if isinstance(seen.json, dict) else None
    return isinstance(options, dict) and options.get("include_usage") is True


def chat_completion_body(model: str, text: str, *, prompt_tokens: int = 1) -> dict[str, Any]:
    """A complete `chat.completion` object answering `text`."""
    return {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(prompt_tokens, len(text.split())),
    }


def chat_stream_events(
    model: str,
    parts: Sequence[str],
    *,
    include_usage: bool = False,
    prompt_tokens: int = 1,
    finish_reason: str | None = "stop",
) -> list[object]:
    """`chat.completion.chunk` dicts sharing one id: a role chunk, one chunk per part, a
    chunk with `finish_reason` (left out when None) and, if asked, a usage chunk."""
    completion_id, created = _new_id("chatcmpl-"), int(time.time())

    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
        }

    events: list[object] = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": part}) for part in parts]
    if finish_reason is not None:
        events.append(chunk({}, finish_reason))
    if include_usage:
        usage = _usage(prompt_tokens, len("".join(parts).split()))
        events.append(chunk({}) | {"choices": [], "usage": usage})
    return events


def _text_completion_events(seen: SeenRequest, parts: Sequence[str]) -> list[object]:
    completion_id, created = _new_id("cmpl-"), int(time.time())

    def chunk(text: str, finish: str | None) -> dict[str, Any]:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        base = {"id": completion_id, "object": "text_completion", "created": created}
        return base | {"model": seen.model, "choices": [choice]}

    events: list[object] = [chunk(part, None) for part in parts]
    events.append(chunk("", "stop"))
    if _include_usage(seen):
        usage = _usage(_prompt_tokens(seen), len("".join(parts).split()))
        events.append(chunk("", None) | {"choices": [], "usage": usage})
    return events


def _response_object(seen: SeenRequest, text: str, *, response_id: str, done: bool) -> object:
    message = {
        "type": "message",
        "id": "msg_" + response_id.removeprefix("resp_"),
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    prompt, completion = _prompt_tokens(seen), len(text.split())
    usage = {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
    }
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed" if done else "in_progress",
        "model": seen.model,
        "output": [message] if done else [],
        "usage": usage if done else None,
    }


def _responses_events(seen: SeenRequest, parts: Sequence[str]) -> list[object]:
    response_id = _new_id("resp_")
    item_id = "msg_" + response_id.removeprefix("resp_")
    started = _response_object(seen, "", response_id=response_id, done=False)
    finished = _response_object(seen, "".join(parts), response_id=response_id, done=True)
    steps: list[tuple[str, dict[str, object]]] = [("response.created", {"response": started})]
    for part in parts:
        delta = {"item_id": item_id, "output_index": 0, "content_index": 0, "delta": part}
        steps.append(("response.output_text.delta", delta))
    steps.append(("response.completed", {"response": finished}))
    return [
        sse_event({"type": kind, "sequence_number": n} | data, event=kind)
        for n, (kind, data) in enumerate(steps)
    ]


def _model_object(model_id: str, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


def default_body(seen: SeenRequest, name: str) -> object:
    """The automatic non-stream answer for the request's path."""
    path, text = seen.path.rstrip("/"), f"Hello from {name}"
    if seen.method == "GET" and path.endswith("/models"):
        ids = (f"{name}-chat", f"{name}-embedding")
        return {"object": "list", "data": [_model_object(i, name) for i in ids]}
    if seen.method == "GET" and "/models/" in path:
        return _model_object(path.partition("/models/")[2], name)
    if path.endswith("/embeddings"):
        raw = seen.json.get("input") if isinstance(seen.json, dict) else None
        inputs = raw if isinstance(raw, list) else [raw]
        data = [
            {"object": "embedding", "index": i, "embedding": [0.125 * (i + 1)] * 8}
            for i in range(len(inputs))
        ]
        prompt = _prompt_tokens(seen)
        usage = {"prompt_tokens": prompt, "total_tokens": prompt}
        return {"object": "list", "data": data, "model": seen.model, "usage": usage}
    if path.endswith("/responses"):
        return _response_object(seen, text, response_id=_new_id("resp_"), done=True)
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        body = chat_completion_body(seen.model, text, prompt_tokens=_prompt_tokens(seen))
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}
        return body | {"id": _new_id("cmpl-"), "object": "text_completion", "choices": [choice]}
    return chat_completion_body(seen.model, text, prompt_tokens=_prompt_tokens(seen))


def default_stream(seen: SeenRequest, name: str) -> tuple[list[object], bool]:
    """The automatic stream for the request's path, and whether `[DONE]` may follow it."""
    path, parts = seen.path.rstrip("/"), ["Hello", " from", f" {name}"]
    if path.endswith("/responses"):
        return _responses_events(seen, parts), False
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        return _text_completion_events(seen, parts), True
    events = chat_stream_events(
        seen.model, parts, include_usage=_include_usage(seen), prompt_tokens=_prompt_tokens(seen)
    )
    return events, True


def _error(status_type: str, message: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": status_type, "param": None, "code": code}}


def choose_automatically(seen: SeenRequest) -> Behaviour:
    """The default answer, streamed when the request asks for a stream."""
    return Stream() if seen.wants_stream else Reply()


def choose_by_model(
    seen: SeenRequest, *, event_delay: float = 0.05, slow_delay: float = 1.0
) -> Behaviour:
    """Behaviour picked from the model name, for the standalone process."""
    model = seen.model
    if "ratelimited" in model:
        body = _error("requests", f"Rate limit reached for {model}.", "rate_limit_exceeded")
        return Reply(429, json=body, headers={"Retry-After": "30"})
    if "error" in model:
        return Reply(500, json=_error("server_error", "The server had an error.", None))
    slow = slow_delay if "slow" in model else 0.0
    if seen.wants_stream:
        return Stream(first_delay=slow, delay=event_delay)
    return Reply(delay=slow)
