"""Reading what a client sent: its request id, API path, proxy key and JSON body.

Pure functions (no I/O, no aiohttp): the server calls them on every request, and the
checks they make (SPEC §7, §8) are testable without a socket.
"""

from __future__ import annotations

import hmac
import random
from collections.abc import Mapping
from typing import Any

import orjson

from proxy import errors, jsontext

# API path (after `/v1/`) -> metric route label. Other POST paths are routed as "other".
ROUTES = {
    "chat/completions": "chat_completions",
    "completions": "completions",
    "embeddings": "embeddings",
    "responses": "responses",
}
_UNMETERED = frozenset({"/healthz", "/readyz", "/metrics"})
_MAX_REQUEST_ID = 128
# Version 4 and RFC 4122 variant bits of a UUID, as `uuid.UUID(version=4)` sets them.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def request_id(given: str | None) -> str:
    """The client's `x-request-id` when short printable ASCII, else a fresh one."""
    if given and len(given) <= _MAX_REQUEST_ID and given.isprintable() and given.isascii():
        return given
    # The hex of a version-4 UUID, as uuid.uuid4().hex, without its getrandom() syscall and
    # UUID object (2.9 -> 0.5 us): an id correlates log lines, it guards nothing, and
    # `random` is reseeded in forked workers.
    return f"{(random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"


def api_path(path: str) -> str | None:
    """`/v1/chat/completions` or `/chat/completions` -> `chat/completions`."""
    if path.startswith("/v1/"):
        rest = path[4:]
    elif path.startswith("/"):
        rest = path[1:]
    else:
        return None
    return rest or None


def route_label(path: str) -> str | None:
    """The metric route of a request answered without an upstream; None for probes and
    scrapes (`/healthz`, `/readyz`, `/metrics`), which are not counted."""
    if path in _UNMETERED:
        return None
    rest = api_path(path)
    if rest is None:
        return "other"
    if rest == "models" or rest.startswith("models/"):
        return "models"
    return ROUTES.get(rest, "other")


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The proxy key from `Authorization: Bearer`, `x-api-key` or `api-key`."""
    auth = headers.get("Authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return headers.get("x-api-key") or headers.get("api-key")


def check_content_encoding(value: str | None) -> None:
    """A 415 for a body sent compressed (`Content-Encoding` other than `identity`).

    Inflating is work the client chooses the size of: a 1 MB gzip body can inflate to 1 GB,
    far past `max_body_bytes`, and the read would stall every other request meanwhile.
    """
    if value is None:
        return
    for coding in value.split(","):
        coding = coding.strip()
        if coding and coding.lower() != "identity":
            raise errors.unsupported_content_encoding(coding)


def check_proxy_key(headers: Mapping[str, str], keys: tuple[bytes, ...]) -> None:
    """Nothing when the request presents one of `keys` (or none are required), else a 401."""
    if not keys:
        return
    token = presented_key(headers)
    if token is None:
        raise errors.invalid_api_key()
    try:
        presented = token.encode()
    except UnicodeEncodeError:
        # Header bytes that are not UTF-8 arrive as surrogate escapes: never one of our keys.
        raise errors.invalid_api_key() from None
    # Compare against every key without stopping early: timing reveals nothing.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    if not matched:
        raise errors.invalid_api_key()


def parse_payload(body: bytes) -> dict[str, Any]:
    """The body as a JSON object with a non-empty string `model`, else a 400 (SPEC §8)."""
    if not body:
        raise errors.bad_request("The request body is empty; send a JSON object.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            # Valid JSON orjson refuses: a lone escaped surrogate (half an emoji).
            payload = jsontext.loads_refused(body)
        except ValueError:
            raise errors.bad_request(f"The request body is not valid JSON: {exc.msg}.") from None
    if not isinstance(payload, dict):
        raise errors.bad_request("The request body must be a JSON object.")
    model = payload.get("model")
    if model is None:
        raise errors.bad_request("'model' is required.", param="model")
    if not isinstance(model, str) or not model:
        raise errors.bad_request("'model' must be a non-empty string.", param="model")
    return payload
