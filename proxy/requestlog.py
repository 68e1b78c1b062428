"""The one log line per request (SPEC §10), and the JSON log format.

Every line has the same fields, so a log pipeline can rely on them: `request_id`, `route`,
`model` (the public model label of the metrics: a configured name or "other"; null when the
request was rejected before its body was read), `stream`, `status`, `tier` and `provider` of
the answer (null when no upstream answered), `attempts` (`provider:outcome` in order),
`ttfb_ms` (the serving attempt's time to its first byte, for streams its first data event),
`duration_ms`, `prompt_tokens`, `completion_tokens`, plus `interrupted` when a stream was cut.

Fields only, never bodies, headers or keys. Nothing is built unless the line will be emitted,
so a proxy logging at WARNING pays nothing per request for this.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from proxy.forward import Call

access_log = logging.getLogger("proxy.access")


def log_request(call: Call, model_label: str, started: float) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    duration = time.monotonic() - started
    fields: dict[str, Any] = {
        "request_id": call.request_id,
        "route": call.route,
        "model": model_label,
        "stream": call.stream,
        "status": call.status,
        "tier": call.tier,
        "provider": call.provider,
        "attempts": [f"{p}:{o}" for p, o in call.trail.attempts],
        "ttfb_ms": round(call.ttfb * 1000, 1) if call.ttfb is not None else None,
        "duration_ms": round(duration * 1000, 1),
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.completion_tokens,
    }
    if call.interrupted:
        fields["interrupted"] = call.interrupted
    access_log.info("request", extra={"fields": fields})


def log_unrouted(request_id: str, route: str, status: int, duration: float) -> None:
    """The line of a request answered without an upstream: rejected (401, 400, 404, 405,
    413) or served by the proxy itself (models list, status)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "request_id": request_id,
        "route": route,
        "model": None,
        "stream": None,
        "status": status,
        "tier": None,
        "provider": None,
        "attempts": [],
        "ttfb_ms": None,
        "duration_ms": round(duration * 1000, 1),
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }
    access_log.info("request", extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line["request_id"] = request_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal; structured fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        base = (
            f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route every logger to stderr in the chosen format (`json` or `text`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log duplicates ours; its errors still reach the root logger.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
