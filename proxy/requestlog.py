"""The one log line per request (SPEC §10), and the JSON log format.

Fields only, never bodies or keys. Nothing is built unless the line will be emitted, so a
proxy logging at WARNING pays nothing per request for this.
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
