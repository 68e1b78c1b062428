"""Reading a client's request body: bounded in size, in silence, and never inflated.

I/O on aiohttp's request stream; what the body must then be (JSON, a `model`) is
`proxy.clientrequest`'s business.
"""

from __future__ import annotations

import asyncio

from aiohttp.web import BaseRequest

from proxy import clientrequest, errors

# Longest silence allowed while a request body uploads (408 after it). Bounds the silence, not
# the upload, so a large body on a slow link still gets through; a client quiet this long has
# stalled, or is holding the connection open on purpose.
BODY_SILENCE_SECONDS = 30.0
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def read_body(request: BaseRequest, limit: int) -> bytes:
    """The request's whole body, at most `limit` bytes (413 past it), never compressed (415)."""
    clientrequest.check_content_encoding(request.headers.get("Content-Encoding"))
    length = request.content_length
    if length is not None and length > limit:
        raise errors.body_too_large(limit)
    content = request.content
    # A body usually arrives whole with the headers: take it with no wait and no timer.
    body = content.read_nowait()
    if len(body) > limit:
        raise errors.body_too_large(limit)
    if content.at_eof():
        return body
    return await _read_rest(request, body, limit)


async def _read_rest(request: BaseRequest, first: bytes, limit: int) -> bytes:
    """The rest of a body still uploading, each wait bounded by `BODY_SILENCE_SECONDS`."""
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == ("100-continue"):
        # The client waits for this before it sends the body (curl for a second, then
        # sends anyway). Sent only now, so a 401 or 413 answer never invites the upload.
        writer = request.writer
        await writer.write(_CONTINUE)
        writer.output_size = 0  # the interim answer is no part of the response's size
    content = request.content
    chunks = [first] if first else []
    size = len(first)
    silence = BODY_SILENCE_SECONDS
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(silence) as bound:
            while chunk := await content.readany():
                bound.reschedule(loop.time() + silence)
                size += len(chunk)
                if size > limit:
                    raise errors.body_too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise errors.request_timeout(silence) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
