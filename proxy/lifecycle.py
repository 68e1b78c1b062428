"""Process life cycle: start, reload, drain, stop (SPEC §10).

- Start: load, compile, listen; log which providers are disabled and why, once.
- Reload on SIGHUP or when the config file changes (polled by content identity, which also
  catches a Kubernetes ConfigMap's `..data` symlink swap): the new file is validated first; an
  invalid one keeps the old table (logged, counted). Key state carries over by key hash.
- SIGTERM / SIGINT: `/readyz` turns 503 at once while the listener keeps serving; the process
  exits 0 as soon as nothing is in flight, or after `shutdown_grace_seconds`, ending the
  streams still open with an error event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import signal
import time
from pathlib import Path

from aiohttp import web

from proxy.config import ConfigError, load_settings
from proxy.gateway import Gateway
from proxy.metrics import Metrics
from proxy.server import ProxyServer
from proxy.settings import Settings

log = logging.getLogger("proxy")

_WATCH_INTERVAL = 1.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(settings: Settings, config_path: str) -> int:
    """Serve until SIGTERM/SIGINT; the exit code for the process."""
    server = settings.server
    if not server.api_keys and not is_loopback(server.host) and not server.allow_unauthenticated:
        log.error(
            "refusing to listen on %s without proxy keys: set server.api_keys "
            "(PROXY_API_KEY) or server.allow_unauthenticated: true",
            server.host,
        )
        return 2
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        pass
    return asyncio.run(Lifecycle(settings, config_path).serve())


def _file_identity(path: str) -> tuple[int, int, int, str] | None:
    """What changes when the file's content is replaced, by write, rename or symlink swap."""
    try:
        real = Path(path).resolve()
        st = real.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, str(real))


def log_disabled(settings: Settings) -> None:
    for provider in settings.providers:
        if provider.disabled_reason is not None:
            log.warning(
                "provider disabled",
                extra={"fields": {"provider": provider.name, "reason": provider.disabled_reason}},
            )
        else:
            for endpoint in provider.endpoints:
                if endpoint.disabled_reason is not None:
                    log.info(
                        "endpoint disabled",
                        extra={
                            "fields": {
                                "provider": provider.name,
                                "reason": endpoint.disabled_reason,
                            }
                        },
                    )


class Lifecycle:
    """Owns the listener, the signal handlers and the config watcher of one process."""

    def __init__(self, settings: Settings, config_path: str) -> None:
        self.settings = settings
        self.config_path = config_path
        self.metrics = Metrics()
        self.server = ProxyServer(Gateway(settings), self.metrics)
        self.metrics.bind(self.server)
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._identity = _file_identity(config_path)

    async def serve(self) -> int:
        started = time.monotonic()
        log_disabled(self.settings)
        await self.server.start()
        runner = web.ServerRunner(self.server.web_server(), handle_signals=False)
        await runner.setup()
        host, port = self.settings.server.host, self.settings.server.port
        site = web.TCPSite(runner, host, port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", host, port, exc.strerror or exc)
            await runner.cleanup()
            await self.server.close()
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._begin_shutdown, sig)
        loop.add_signal_handler(signal.SIGHUP, self._spawn, self.reload, "SIGHUP")
        self._spawn(self._watch)
        enabled = sum(1 for p in self.settings.providers if p.enabled)
        log.info(
            "listening",
            extra={
                "fields": {
                    "address": f"http://{host}:{port}",
                    "providers_enabled": enabled,
                    "startup_ms": round((time.monotonic() - started) * 1000, 1),
                }
            },
        )
        await self._stop.wait()
        await self._drain()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await runner.cleanup()
        await self.server.close()
        log.info("stopped")
        return 0

    def _spawn(self, factory: object, *args: object) -> None:
        task = asyncio.ensure_future(factory(*args))  # type: ignore[operator]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _begin_shutdown(self, sig: signal.Signals) -> None:
        if self.server.draining:
            return
        log.info(
            "draining",
            extra={"fields": {"signal": sig.name, "inflight": self.server.inflight}},
        )
        self.server.draining = True
        self._stop.set()

    async def _drain(self) -> None:
        grace = self.settings.server.shutdown_grace_seconds
        try:
            async with asyncio.timeout(grace):
                await self.server.wait_idle()
        except TimeoutError:
            log.warning(
                "grace period over; ending requests still in flight",
                extra={"fields": {"inflight": self.server.inflight}},
            )
            await self.server.end_streams()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            identity = _file_identity(self.config_path)
            if identity is not None and identity != self._identity:
                await self.reload("file change")

    async def reload(self, trigger: str) -> None:
        """Load, validate and swap in the config file; keep the old table if it is invalid."""
        self._identity = _file_identity(self.config_path)
        try:
            settings = load_settings(self.config_path)
        except ConfigError as exc:
            self.metrics.config_reload("error")
            log.error(
                "reload rejected; still serving the previous config",
                extra={"fields": {"trigger": trigger, "errors": exc.errors}},
            )
            return
        # The listener cannot move: host and port stay those bound at start (a restart moves them).
        bound = self.settings.server
        settings = dataclasses.replace(
            settings, server=dataclasses.replace(settings.server, host=bound.host, port=bound.port)
        )
        gateway = Gateway(settings, previous=self.server.gateway)
        self.server.swap(gateway)
        self.metrics.rebind(gateway)
        self.settings = settings
        self.metrics.config_reload("ok")
        log_disabled(settings)
        log.info(
            "reloaded",
            extra={
                "fields": {
                    "trigger": trigger,
                    "providers_enabled": sum(1 for p in settings.providers if p.enabled),
                }
            },
        )
