"""Errors the proxy itself answers with, in OpenAI's JSON shape.

Every error body is `{"error": {"message", "type", "param", "code"}}` so that the official
clients raise their usual exception types. Upstream error bodies are never built here: those
are relayed as they came (with the key scrubbed, see `scrub`).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class ProxyError(Exception):
    """An error answer: HTTP status, OpenAI error type and code, extra headers."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def bad_request(message: str, param: str | None = None) -> ProxyError:
    return ProxyError(400, message, "invalid_request_error", "invalid_request", param)


def invalid_api_key() -> ProxyError:
    return ProxyError(
        401,
        "Missing or invalid proxy API key. Send it as 'Authorization: Bearer <key>'.",
        "invalid_request_error",
        "invalid_api_key",
        headers=(("WWW-Authenticate", 'Bearer realm="llmproxy"'),),
    )


def not_found(path: str) -> ProxyError:
    return ProxyError(404, f"Unknown path: {path}", "invalid_request_error", "unknown_url")


def model_not_found(model: str, detail: str = "") -> ProxyError:
    message = f"The model '{model}' is not served by any configured provider."
    if detail:
        message = f"{message} {detail}"
    return ProxyError(404, message, "invalid_request_error", "model_not_found", "model")


def method_not_allowed(method: str, allowed: tuple[str, ...]) -> ProxyError:
    return ProxyError(
        405,
        f"Method {method} is not allowed here; use {', '.join(allowed)}.",
        "invalid_request_error",
        "method_not_allowed",
        headers=(("Allow", ", ".join(allowed)),),
    )


def body_too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        f"Request body is larger than the proxy's limit of {limit} bytes.",
        "invalid_request_error",
        "request_too_large",
    )


def unsupported_content_encoding(coding: str) -> ProxyError:
    # The client's own header value: escaped, since non-UTF-8 bytes would not encode as JSON.
    shown = coding[:64].encode("ascii", "backslashreplace").decode("ascii")
    return ProxyError(
        415,
        f"Content-Encoding '{shown}' is not accepted; send the request body uncompressed.",
        "invalid_request_error",
        "unsupported_content_encoding",
        # RFC 9110 §15.5.16: say which codings would have been accepted.
        headers=(("Accept-Encoding", "identity"),),
    )


def request_timeout(seconds: float) -> ProxyError:
    return ProxyError(
        408,
        f"The request body stalled: no bytes arrived for {seconds:g} seconds.",
        "invalid_request_error",
        "request_timeout",
        # RFC 9110 §15.5.9: the server gives up on the connection, and says so.
        headers=(("Connection", "close"),),
    )


def internal_error(request_id: str) -> ProxyError:
    return ProxyError(
        500,
        f"The proxy hit an unexpected error. Request id: {request_id}.",
        "server_error",
        "internal_error",
    )


def scrub(body: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """Remove credential values an upstream may echo back in a body (some do)."""
    for secret in secrets:
        if secret in body:
            body = body.replace(secret, b"***")
    return body
