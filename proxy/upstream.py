"""The one pooled HTTP client for every upstream, and how one attempt is sent.

The failover loop chooses the candidate and the key; this module only turns them into an HTTP
request. Deadlines for the first byte and for silence between reads are enforced by the caller
(they depend on what counts as an answer); here only the connect timeout is set, and aiohttp's
default 300 s total timeout is switched off so long generations are never cut.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import aiohttp
from aiohttp import ClientResponse, ClientSession, ClientTimeout, StreamReader

from proxy.keypool import Lease
from proxy.settings import Provider

# RFC 9110 §7.6.1 hop-by-hop headers, plus everything that must be recomputed for the new hop
# or that carries the client's own credentials (never forwarded, SPEC §7).
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
        "accept-encoding",
        "authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "expect",
    }
)


def new_session(connect_limit: int = 0) -> ClientSession:
    """The process-wide pooled session: keep-alive, DNS cache, no total timeout."""
    connector = aiohttp.TCPConnector(
        limit=connect_limit,
        limit_per_host=0,
        ttl_dns_cache=300,
        keepalive_timeout=60,
    )
    return ClientSession(
        connector=connector,
        timeout=ClientTimeout(total=None, sock_connect=None, sock_read=None),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
        raise_for_status=False,
        # Upstream bodies are relayed, never parsed as cookies or redirects.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def forwardable_headers(client_headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The client's headers that may travel upstream (no credentials, no hop-by-hop)."""
    out: dict[str, str] = {}
    for name, value in client_headers:
        if name.lower() not in _NOT_FORWARDED:
            out[name] = value
    return out


def attempt_headers(
    provider: Provider, lease: Lease, forwarded: Mapping[str, str]
) -> dict[str, str]:
    """Headers for one attempt: the forwarded ones, the provider's extras, then its auth."""
    headers = dict(forwarded)
    headers["Content-Type"] = "application/json"
    for name, value in provider.headers:
        headers[name] = value
    if lease.key is not None:
        auth = provider.auth_header
        headers[auth.name] = auth.value(lease.key.secret)
    return headers


async def send(
    session: ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    connect_timeout: float,
) -> ClientResponse:
    """Open one upstream request; the caller owns (and must release) the response."""
    return await session.post(
        url,
        data=body,
        headers=headers,
        timeout=_attempt_timeout(connect_timeout),
        allow_redirects=False,
    )


@functools.lru_cache(maxsize=64)
def _attempt_timeout(connect: float) -> ClientTimeout:
    # One immutable value per configured connect timeout, not one object per request.
    return ClientTimeout(total=None, connect=connect, sock_read=None)


def take_buffered(content: StreamReader) -> bytes:
    """Bytes already received but not yet handed out when the payload failed.

    When an upstream writes its last events and closes at once (no chunked terminator),
    aiohttp records a payload error and `readany()` raises it *before* returning what is
    still buffered. Those bytes are real answer text, so read around the error.
    """
    buffer = getattr(content, "_buffer", None)
    if not buffer:
        return b""
    data = b"".join(buffer)
    buffer.clear()
    return data
