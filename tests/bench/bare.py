"""The reference: a bare aiohttp passthrough, what a 40-line proxy does and nothing more.

No auth, routing, failover, parsing or metrics: the body goes to one upstream and the answer
comes back, streamed chunk by chunk. Same event loop (uvloop) as the proxy, for a fair
comparison. `python -m tests.bench.bare --port 9952 --upstream http://127.0.0.1:9950`
"""

import argparse

import aiohttp
from aiohttp import web

HOP = {"host", "content-length", "transfer-encoding", "connection", "authorization"}


async def handle(request: web.Request) -> web.StreamResponse:
    session: aiohttp.ClientSession = request.app["session"]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    url = request.app["upstream"] + request.path_qs
    async with session.post(url, data=await request.read(), headers=headers) as upstream:
        if upstream.content_type != "text/event-stream":
            body = await upstream.read()
            return web.Response(status=upstream.status, body=body, content_type="application/json")
        response = web.StreamResponse(status=upstream.status)
        response.content_type = "text/event-stream"
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def ready(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


async def app(upstream: str) -> web.Application:
    application = web.Application()
    application["upstream"] = upstream

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["session"].close()

    application.cleanup_ctx.append(session_ctx)
    application.router.add_post("/{tail:.*}", handle)
    application.router.add_get("/readyz", ready)
    return application


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9952)
    parser.add_argument("--upstream", default="http://127.0.0.1:9950")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None)
