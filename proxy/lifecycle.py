"""Process life cycle: start, reload, drain, stop (SPEC §10).

- Start: load, compile, listen; log which providers are disabled and why, once.
- Reload on SIGHUP or when the config file changes (polled by content identity, which also
  catches a Kubernetes ConfigMap's `..data` symlink swap): the new file is validated first; an
  invalid one keeps the old table (logged, counted). Key state carries over by key hash.
- SIGTERM / SIGINT: `/readyz` turns 503 at once while the listener keeps serving; the process
  exits 0 as soon as nothing is in flight, or after `shutdown_grace_seconds`, ending the
  streams still open with an error event. A second signal ends the grace period at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import ipaddress
import logging
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.config import ConfigError, load_settings
from proxy.gateway import Gateway
from proxy.metrics import Metrics
from proxy.server import ProxyServer
from proxy.settings import Settings

log = logging.getLogger("proxy")

# How often the config file is polled. A ConfigMap update reaches the pod's volume after the
# kubelet's sync period (a minute or so), so a second of polling adds nothing noticeable.
WATCH_INTERVAL = 1.0
# After the grace period and the forced end of the streams, how long a connection that is still
# busy (a request read in the very last moment) may take before it is closed.
_CLOSE_TIMEOUT = 1.0

FileIdentity = tuple[int, int, int, str, bytes]


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
    # Until the loop's own handler is installed, a SIGHUP (reload) must not kill the process;
    # the watcher notices any change made meanwhile.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    lifecycle = Lifecycle(settings, config_path)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(lifecycle.serve())
    return uvloop.run(lifecycle.serve())


def file_identity(path: str) -> FileIdentity | None:
    """What changes when the file's content is replaced: by an in-place write (mtime, size),
    a rename over it (inode) or a symlink swap such as a ConfigMap's `..data` (real path).

    A digest of the content too: two writes of the same size within one tick of the file
    system's clock leave mtime and size alone. The file is a few kilobytes, read once a
    second.
    """
    try:
        real = Path(path).resolve()
        st = real.stat()
        digest = hashlib.blake2b(real.read_bytes(), digest_size=16).digest()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop, mid-edit
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, str(real), digest)


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
        self._hurry = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._identity = file_identity(config_path)

    async def serve(self) -> int:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        # Before listening: a SIGTERM during start-up must drain, not kill the process.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._begin_shutdown, sig)
        loop.add_signal_handler(signal.SIGHUP, self._spawn_reload, "SIGHUP")
        log_disabled(self.settings)
        await self.server.start()
        runner = web.ServerRunner(
            self.server.web_server(), handle_signals=False, shutdown_timeout=_CLOSE_TIMEOUT
        )
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
        self._spawn(self._watch())
        # What start-up built (modules, config, metrics) lives as long as the process: keep
        # it out of the cyclic collector's way, or every full collection under load walks
        # all of it again (~40 ms each, stalling every request in flight). A request makes
        # a few hundred short-lived containers that reference counting frees; collecting
        # the young generation every 700 of them found little: every 7,000 is enough.
        # Together: the collector's share of CPU under load went from ~6% to ~1%.
        gc.freeze()
        gc.set_threshold(7000, 10, 10)
        bound = runner.addresses[0][1] if runner.addresses else port  # port 0: the real one
        log.info(
            "listening",
            extra={
                "fields": {
                    "address": f"http://{host}:{bound}",
                    "port": bound,
                    "providers_enabled": sum(1 for p in self.settings.providers if p.enabled),
                    "startup_ms": round((time.monotonic() - started) * 1000, 1),
                }
            },
        )
        await self._stop.wait()
        await self._drain(runner, site)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await runner.cleanup()
        await self.server.close()
        log.info("stopped")
        return 0

    # -- shutdown ------------------------------------------------------------------------

    def _begin_shutdown(self, sig: signal.Signals) -> None:
        if self.server.draining:
            # A second signal (an impatient Ctrl-C): stop waiting for what is in flight.
            log.warning("second signal; ending requests in flight now")
            self._hurry.set()
            return
        log.info(
            "draining",
            extra={
                "fields": {
                    "signal": sig.name,
                    "inflight": self.server.busy,
                    "grace_seconds": self.settings.server.shutdown_grace_seconds,
                }
            },
        )
        self.server.draining = True
        self._stop.set()

    async def _drain(self, runner: web.ServerRunner, site: web.BaseSite) -> None:
        """Serve on until idle or the grace period ends, then close and end what remains."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.server.shutdown_grace_seconds
        # The listener stays open meanwhile: Kubernetes keeps sending new requests for a moment
        # after SIGTERM, and those must be served, not refused.
        await self._wait_idle(deadline)
        await site.stop()
        # A request accepted just before the listener closed still gets the rest of the grace.
        await self._wait_idle(deadline)
        if self.server.busy:
            log.warning(
                "grace period over; ending requests still in flight",
                extra={"fields": {"inflight": self.server.busy}},
            )
            await self.server.end_streams()
        web_server = runner.server
        if web_server is not None:
            # Close idle keep-alive connections now. A request that reached one in the very
            # last moment gets what is left of the grace (at least _CLOSE_TIMEOUT), then is
            # cut; without this bound the runner's cleanup would wait up to a minute for it.
            web_server.pre_shutdown()
            await web_server.shutdown(max(deadline - loop.time(), _CLOSE_TIMEOUT))

    async def _wait_idle(self, deadline: float) -> None:
        """Until nothing is in flight, `deadline` (loop time) passes or a second signal."""
        if self._hurry.is_set():
            return
        idle = asyncio.ensure_future(self.server.wait_idle())
        hurry = asyncio.ensure_future(self._hurry.wait())
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            await asyncio.wait({idle, hurry}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            hurry.cancel()
            await asyncio.gather(idle, hurry, return_exceptions=True)

    # -- reload --------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_reload(self, trigger: str) -> None:
        self._spawn(self.reload(trigger))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            identity = file_identity(self.config_path)
            # None: the file is missing for a moment (mid-swap); wait for it to come back.
            if identity is not None and identity != self._identity:
                await self.reload("file change")

    async def reload(self, trigger: str) -> None:
        """Load, validate and swap in the config file; keep the old table if it is invalid."""
        # Taken before reading: a write landing after the read changes it again, so the
        # watcher reloads once more rather than keep a half-written file's view.
        self._identity = file_identity(self.config_path)
        try:
            settings = load_settings(self.config_path)
            gateway = self._gateway_for(settings)
        except ConfigError as exc:
            self._reload_failed(trigger, exc.errors)
            return
        except Exception:
            # Not a config error, but still no reason to stop serving the table we have.
            log.exception("reload failed", extra={"fields": {"trigger": trigger}})
            self._reload_failed(trigger, ["unexpected error, see the log"])
            return
        self.server.swap(gateway)
        self.metrics.rebind(gateway)
        self.settings = gateway.settings
        self.metrics.config_reload("ok")
        log_disabled(gateway.settings)
        log.info(
            "reloaded",
            extra={
                "fields": {
                    "trigger": trigger,
                    "providers_enabled": sum(1 for p in gateway.settings.providers if p.enabled),
                }
            },
        )

    def _gateway_for(self, settings: Settings) -> Gateway:
        # The listener cannot move: host and port stay those bound at start (a restart moves
        # them), which also keeps command-line overrides of them in force.
        bound = self.settings.server
        server = dataclasses.replace(settings.server, host=bound.host, port=bound.port)
        settings = dataclasses.replace(settings, server=server)
        return Gateway(settings, previous=self.server.gateway)

    def _reload_failed(self, trigger: str, errors: list[str]) -> None:
        self.metrics.config_reload("error")
        log.error(
            "reload rejected; still serving the previous config",
            extra={"fields": {"trigger": trigger, "errors": errors}},
        )
