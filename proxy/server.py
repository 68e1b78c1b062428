"""The HTTP front: a low-level `aiohttp.web.Server` with a small dispatch table.

No router and no middleware chain: the path is looked up in a dict, the proxy key and the
JSON body are checked by `proxy.clientrequest`, the body read by `proxy.requestbody`, and
routed requests go to `Forwarder`. Every answer carries
`x-request-id`; every error the proxy makes is OpenAI-shaped JSON (SPEC §7, §8). An unexpected
exception becomes a 500 naming the request id, with the traceback in the log only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import ClientSession, web
from aiohttp.web import BaseRequest

from proxy import clientrequest, errors
from proxy.clientrequest import ROUTES
from proxy.errors import ProxyError
from proxy.forward import Call, Forwarder
from proxy.gateway import Gateway
from proxy.observer import NullObserver, Observer
from proxy.requestbody import read_body
from proxy.requestlog import log_request, log_unrouted
from proxy.sse import encode_event
from proxy.status import render_status
from proxy.upstream import forwardable_headers, new_session

log = logging.getLogger("proxy.server")

# Idle keep-alive connections, and request headers that never finish, are closed after this
# long (aiohttp's own default is an hour). Longer than the idle timeouts of common clients and
# load balancers (60 s on many): whoever reuses a connection must be the one to give it up
# first, or its next request races our close and fails.
KEEPALIVE_SECONDS = 75.0

Handler = Callable[[BaseRequest, str], Awaitable[web.StreamResponse]]

SHUTDOWN_EVENT = encode_event(
    errors.error_body(
        "The proxy is shutting down and ended this stream before it was complete.",
        "api_error",
        "shutdown",
    )
)


class ProxyServer:
    """Holds the live gateway, the pooled client session and the request handler."""

    def __init__(self, gateway: Gateway, observer: Observer | None = None) -> None:
        self.gateway = gateway
        self.observer: Observer = observer if observer is not None else NullObserver()
        self.draining = False
        self.inflight = 0
        # Requests being handled, routed or not, a body still uploading included: a drain
        # waits for these, since the HTTP server stops reading once it starts closing.
        self.busy = 0
        self.metrics_handler: Handler | None = None
        self._session: ClientSession | None = None
        self._calls: dict[asyncio.Task[Any], Call] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        # The forwarder of the live gateway, built with it (it needs the session, hence start()).
        self._forwarder: Forwarder | None = None
        self._api_keys = _proxy_keys(gateway)
        self._exact: dict[str, tuple[str, Handler]] = {
            "/healthz": ("GET", self._healthz),
            "/readyz": ("GET", self._readyz),
            "/metrics": ("GET", self._metrics),
            "/v1/models": ("GET", self._models),
            "/models": ("GET", self._models),
            "/v1/proxy/status": ("GET", self._status),
            "/proxy/status": ("GET", self._status),
        }

    # -- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._session = new_session()
        self._forwarder = self._new_forwarder(self.gateway)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def wait_idle(self) -> None:
        """Return once no request is being handled (callers bound it with a timeout)."""
        await self._idle.wait()

    async def end_streams(self) -> None:
        """Shutdown past the grace period: end open streams with an error event, cancel the rest.

        A stream whose answer is complete (its `[DONE]` written, or every finish reason sent
        and only the upstream's end awaited, at most `LINGER_AFTER_FINISH`) is left to end
        by itself: an error event after a whole answer would call it broken.
        """
        tasks = list(self._calls)
        for task, call in list(self._calls.items()):
            stream = call.client_stream
            response = stream.response if stream is not None else None
            if response is not None and response.prepared:
                if response.done_written or (call.tracker is not None and call.tracker.finished):
                    continue
                with contextlib.suppress(ConnectionResetError, RuntimeError, OSError):
                    await response.write(SHUTDOWN_EVENT)
                if call.provider is not None and call.tier is not None:
                    self.observer.interruption(call.tier, call.provider, "shutdown")
            call.interrupted = "shutdown"
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def swap(self, gateway: Gateway) -> None:
        """Serve new requests from `gateway`; requests in flight keep the one they started on."""
        self.gateway = gateway
        self._api_keys = _proxy_keys(gateway)
        if self._session is not None:
            self._forwarder = self._new_forwarder(gateway)

    def web_server(self) -> web.Server:
        return web.Server(
            self.handle,
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=KEEPALIVE_SECONDS,
            # A compressed body is refused (415) before it is read; without this, aiohttp would
            # inflate it anyway, unbounded, while the answer is a 401 or the 415.
            auto_decompress=False,
        )

    # -- dispatch ------------------------------------------------------------------------

    async def handle(self, request: BaseRequest) -> web.StreamResponse:
        self.busy += 1
        self._idle.clear()
        try:
            response = await self._handle(request)
            if self.draining:
                # No keep-alive while draining: a client's next request opens a new connection
                # (to another replica, or here while the listener is open) instead of reusing
                # one that the exit is about to close under it.
                response.force_close()
            return response
        finally:
            self.busy -= 1
            if self.busy == 0:
                self._idle.set()

    async def _handle(self, request: BaseRequest) -> web.StreamResponse:
        request_id = clientrequest.request_id(request.headers.get("x-request-id"))
        try:
            response = await self._dispatch(request, request_id)
        except ProxyError as exc:
            response = _error(exc, request_id)
        except asyncio.CancelledError:
            raise
        except ConnectionResetError:
            # The client is gone: nothing can reach it, and it is no server error to log.
            return web.Response(status=499)
        except Exception:
            log.exception("unexpected error", extra={"request_id": request_id})
            response = _error(errors.internal_error(request_id), request_id)
        if not response.prepared:
            response.headers["x-request-id"] = request_id
        return response

    async def _dispatch(self, request: BaseRequest, request_id: str) -> web.StreamResponse:
        path = request.path
        exact = self._exact.get(path)
        if exact is None:
            api_path = clientrequest.api_path(path)
            if (
                api_path is not None
                and request.method == "POST"
                and not api_path.startswith("models/")
            ):
                return await self._routed(request, request_id, api_path)
        # Everything else is answered here; it is counted and logged like a routed request,
        # except probes and scrapes, which would drown the traffic they measure.
        route = clientrequest.route_label(path)
        if route is None:
            return await self._endpoint(request, request_id, exact)
        started = time.monotonic()
        status = 500
        try:
            response = await self._endpoint(request, request_id, exact)
            status = response.status
            return response
        except ProxyError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            self._unrouted_done(request_id, route, status, started)

    async def _endpoint(
        self,
        request: BaseRequest,
        request_id: str,
        exact: tuple[str, Handler] | None,
    ) -> web.StreamResponse:
        path = request.path
        if exact is not None:
            method, handler = exact
            if request.method != method and not (method == "GET" and request.method == "HEAD"):
                raise errors.method_not_allowed(request.method, (method,))
            return await handler(request, request_id)
        api_path = clientrequest.api_path(path)
        if api_path is None:
            raise errors.not_found(path)
        if api_path.startswith("models/"):
            if request.method not in ("GET", "HEAD"):
                raise errors.method_not_allowed(request.method, ("GET",))
            return await self._model(request, request_id, api_path[len("models/") :])
        # A POST here went to `_routed`: what is left is the wrong method or an unknown path.
        if api_path in ROUTES:
            raise errors.method_not_allowed(request.method, ("POST",))
        raise errors.not_found(path)

    # -- auth and input ------------------------------------------------------------------

    def _authorize(self, request: BaseRequest) -> None:
        clientrequest.check_proxy_key(request.headers, self._api_keys)

    # -- routed requests -----------------------------------------------------------------

    async def _routed(
        self, request: BaseRequest, request_id: str, api_path: str
    ) -> web.StreamResponse:
        # Both taken now: a reload while the body uploads must not split a request's state.
        gateway, forwarder = self.gateway, self._forwarder
        assert forwarder is not None, "ProxyServer.start() was not awaited"
        started = time.monotonic()
        route = ROUTES.get(api_path, "other")
        try:
            self._authorize(request)
            body = await read_body(request, gateway.settings.server.max_body_bytes)
            payload = clientrequest.parse_payload(body)
        except ProxyError as exc:
            self._unrouted_done(request_id, route, exc.status, started)
            raise
        except asyncio.CancelledError:
            self.observer.client_disconnect(route)
            self._unrouted_done(request_id, route, 499, started)
            raise
        model = payload["model"]
        call = Call(
            request_id=request_id,
            route=route,
            path=api_path,
            body=body,
            payload=payload,
            model=model,
            stream=payload.get("stream") is True,
            forwarded=forwardable_headers(request.headers.items()),
            started=started,
        )
        self.inflight += 1
        task = asyncio.current_task()
        if task is not None:
            self._calls[task] = call
        try:
            return await forwarder.serve(request, call)
        except asyncio.CancelledError:
            sent = call.client_stream is not None and call.client_stream.prepared
            if call.interrupted == "shutdown" and task is not None and not sent:
                # Cut by end_streams, not by the client, and nothing sent yet: answer it.
                task.uncancel()
                call.status = 503
                return _shutdown_response()
            if call.interrupted != "shutdown":
                call.status = 499  # client closed the request (nginx's convention, log only)
                self.observer.client_disconnect(call.route)
            raise
        except ConnectionResetError:
            # A write to a client whose connection is already closing: it left mid-stream,
            # before aiohttp noticed and cancelled this handler. A disconnect like any other.
            call.status = 499
            self.observer.client_disconnect(call.route)
            stream = call.client_stream
            if stream is not None and stream.response is not None:
                return stream.response  # aiohttp finishes a response to a gone client quietly
            raise
        except ProxyError as exc:
            call.status = exc.status
            raise
        except Exception:
            call.status = 500
            raise
        finally:
            self.inflight -= 1
            if task is not None:
                self._calls.pop(task, None)
            model_label = gateway.table.metric_model(model)
            self.observer.request_done(
                call.route, model_label, call.status, call.tier, time.monotonic() - started
            )
            log_request(call, model_label, started)

    def _unrouted_done(self, request_id: str, route: str, status: int, started: float) -> None:
        """Count and log a request that reached no upstream: its model label is "other"."""
        duration = time.monotonic() - started
        self.observer.request_done(route, "other", status, None, duration)
        log_unrouted(request_id, route, status, duration)

    def _new_forwarder(self, gateway: Gateway) -> Forwarder:
        assert self._session is not None
        return Forwarder(
            gateway, self._session, self.observer, gateway.settings.server.sse_keepalive_seconds
        )

    # -- plain endpoints -----------------------------------------------------------------

    async def _healthz(self, request: BaseRequest, request_id: str) -> web.StreamResponse:
        return _json({"status": "ok"})

    async def _readyz(self, request: BaseRequest, request_id: str) -> web.StreamResponse:
        if self.draining:
            return _json({"status": "draining"}, status=503)
        if not self.gateway.ready:
            return _json({"status": "no provider enabled"}, status=503)
        return _json({"status": "ready"})

    async def _metrics(self, request: BaseRequest, request_id: str) -> web.StreamResponse:
        if self.metrics_handler is None:
            raise errors.not_found(request.path)
        return await self.metrics_handler(request, request_id)

    async def _status(self, request: BaseRequest, request_id: str) -> web.StreamResponse:
        self._authorize(request)
        body = render_status(
            self.gateway, time.monotonic(), draining=self.draining, inflight=self.inflight
        )
        return web.Response(body=body, content_type="application/json")

    async def _models(self, request: BaseRequest, request_id: str) -> web.StreamResponse:
        self._authorize(request)
        table = self.gateway.table
        owners = _model_owners(self.gateway)
        data = [_model_object(name, owners.get(name, "llmproxy")) for name in table.public_models]
        data += [_model_object(name, name.split("/", 1)[0]) for name in table.pinned_names()]
        return _json({"object": "list", "data": data})

    async def _model(
        self, request: BaseRequest, request_id: str, model_id: str
    ) -> web.StreamResponse:
        self._authorize(request)
        table = self.gateway.table
        plan = table.plan(model_id, "chat/completions")
        if plan.empty:
            plan = table.plan(model_id, "embeddings")
        if plan.empty:
            raise errors.model_not_found(model_id)
        return _json(_model_object(model_id, plan.tiers[0][0].provider.name))


def _model_owners(gateway: Gateway) -> dict[str, str]:
    owners: dict[str, str] = {}
    for provider in gateway.table.enabled:
        if provider.models is not None:
            for name in provider.models.public_names():
                owners.setdefault(name, provider.name)
    return owners


def _model_object(model_id: str, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


def _proxy_keys(gateway: Gateway) -> tuple[bytes, ...]:
    return tuple(key.reveal().encode() for key in gateway.settings.server.api_keys)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json")


def _error(exc: ProxyError, request_id: str) -> web.Response:
    response = web.Response(status=exc.status, body=exc.body(), content_type="application/json")
    for name, value in exc.headers:
        response.headers[name] = value
        if name == "Connection" and value == "close":
            response.force_close()  # so that aiohttp, too, ends the connection after it
    return response


def _shutdown_response() -> web.Response:
    """A request cut by the end of the shutdown grace before anything was sent to it."""
    exc = ProxyError(503, "The proxy is shutting down; retry the request.", "api_error", "shutdown")
    response = _error(exc, "")
    response.force_close()  # the process is about to exit: no keep-alive
    return response
