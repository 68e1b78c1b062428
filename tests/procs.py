"""A proxy in a real subprocess, for the life-cycle, reload and image tests.

`python -m proxy serve` runs as a child process (the container image's own command) against
the in-process fake upstream. It listens on port 0 and the test reads the bound port from its
"listening" log line, so there is no race for a free port. Its JSON log lines are collected
as they arrive; fixtures are imported by the test modules that use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.harness import PROXY_KEY, chat, document, provider

AUTH = {"Authorization": f"Bearer {PROXY_KEY}"}
REPO = Path(__file__).resolve().parents[1]
# Upstream key values: they must never appear in the proxy's output.
KEYS = {"KEY_A1": "sk-life-a1-secret", "KEY_A2": "sk-life-a2-secret", "KEY_A3": "sk-life-a3-secret"}
LogLine = dict[str, Any]


def serve_command(config: Path) -> list[str]:
    """The image's start command (see the Dockerfile), with the config and port as flags."""
    return [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", "0"]


def clean_environ() -> dict[str, str]:
    """This process's environment without anything that would steer the proxy."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "PROVIDER_PRIORITY_"))
    }


class ProxyProcess:
    """A proxy in a subprocess; its JSON log lines collected as they come."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env
        self.logs: list[LogLine] = []
        self.stderr = ""
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())

    async def wait_listening(self) -> None:
        listening = await self.wait_log(lambda line: line.get("msg") == "listening", timeout=15)
        self.port = listening["port"]

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for raw in self._proc.stderr:
            text = raw.decode(errors="replace")
            self.stderr += text
            with contextlib.suppress(ValueError):
                self.logs.append(json.loads(text))
            self._changed.set()
        self._changed.set()

    async def wait_log(self, match: Callable[[LogLine], bool], timeout: float = 10) -> LogLine:
        """The first log line matching `match`, waiting for it to be written."""
        async with asyncio.timeout(timeout):
            while True:
                found = [line for line in self.logs if match(line)]
                if found:
                    return found[0]
                if self._reader is not None and self._reader.done():
                    raise AssertionError(f"proxy exited before the log line:\n{self.stderr}")
                self._changed.clear()
                await self._changed.wait()

    def send(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        self._proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 10) -> int:
        """The exit code; fails the test if the process is still running after `timeout`."""
        assert self._proc is not None and self._reader is not None
        async with asyncio.timeout(timeout):
            code = await self._proc.wait()
            await self._reader
        return code

    async def close(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        if self._reader is not None:
            await self._reader

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(name="spawn")
async def spawn_fixture() -> AsyncIterator[Callable[..., Any]]:
    """`await spawn(config_path)` starts a proxy process and waits until it listens;
    `argv`/`env` replace the command and environment, `listen=False` skips the wait.
    Killed at teardown if still alive."""
    started: list[ProxyProcess] = []

    async def start(
        config: Path | None = None,
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
        listen: bool = True,
    ) -> ProxyProcess:
        if argv is None:
            assert config is not None
            argv = [*serve_command(config), "--log-format", "json"]
        if env is None:
            env = {**clean_environ(), "PROXY_API_KEY": PROXY_KEY, **KEYS}
        proc = ProxyProcess(argv, env)
        started.append(proc)
        await proc.start()
        if listen:
            await proc.wait_listening()
        return proc

    yield start
    for proc in started:
        await proc.close()
    for proc in started:
        for value in KEYS.values():
            assert value not in proc.stderr, "an upstream key value reached the log"


@pytest.fixture(name="client")
async def client_fixture() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    """Replace the file atomically (a rename, like an editor or `kubectl cp` would not, but
    like every careful deploy tool does): the proxy never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))  # JSON is YAML
    tmp.replace(path)
    return path


def config_doc(
    upstreams: dict[str, FakeUpstream], grace: float = 5, **providers_extra: Any
) -> dict[str, Any]:
    """Providers named after the upstreams, all tier 1 in that order, keyed by KEY_A1."""
    providers = {
        name: provider(up.base_url, keys=["${KEY_A1}"], **providers_extra)
        for name, up in upstreams.items()
    }
    # Upstream timeouts far above any grace period here: a stream or request that is still
    # open when the grace ends must be ended by the shutdown, never by a timeout first.
    timeouts = {"connect": 2, "first_byte": 30, "idle": 30, "total": 60}
    doc = document(providers, {"timeouts": timeouts}, shutdown_grace_seconds=grace)
    doc["server"]["api_keys"] = ["${PROXY_API_KEY}"]
    doc["defaults"]["rotation"] = "sequential"
    return doc


async def data_lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The `data:` payloads of an SSE response as they arrive."""
    async for line in response.content:
        if line.startswith(b"data: "):
            yield line[6:].rstrip(b"\r\n")


async def metric(client: aiohttp.ClientSession, proxy: ProxyProcess, series: str) -> float:
    async with client.get(proxy.url + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in /metrics")


async def readyz(client: aiohttp.ClientSession, proxy: ProxyProcess) -> int:
    async with client.get(proxy.url + "/readyz") as response:
        return response.status


async def ask(client: aiohttp.ClientSession, proxy: ProxyProcess) -> aiohttp.ClientResponse:
    async with client.post(proxy.url + "/v1/chat/completions", json=chat(), headers=AUTH) as r:
        await r.read()
        return r


def configmap_volume(
    root: Path, version: str, doc: dict[str, Any], dotenv: str | None = None
) -> Path:
    """Lay out (or update) a directory the way the kubelet mounts a ConfigMap (or a projected
    volume, with a `.env` from a Secret beside the table).

    `providers.yaml -> ..data/providers.yaml`, `..data -> ..<version>`; an update writes a new
    `..<version>` directory and renames a fresh symlink over `..data`, an atomic swap that
    leaves the `providers.yaml` symlink itself untouched.
    """
    data = root / f"..{version}"
    data.mkdir(parents=True)
    files = {"providers.yaml": json.dumps(doc, indent=2)}
    if dotenv is not None:
        files[".env"] = dotenv
    for name, text in files.items():
        (data / name).write_text(text)
    staged = root / "..data_tmp"
    staged.symlink_to(data.name)
    staged.replace(root / "..data")
    for name in files:
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    return root / "providers.yaml"
