"""The container image's start command, run for real: the Dockerfile's ENTRYPOINT and CMD
with its ENV (no Docker engine here), its HEALTHCHECK and its STOPSIGNAL.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import dockerfile
from tests.fakes.upstream import FakeUpstream
from tests.harness import PROXY_KEY
from tests.procs import (  # noqa: F401 - the fixtures
    KEYS,
    REPO,
    ask,
    clean_environ,
    client_fixture,
    config_doc,
    readyz,
    serve_command,
    spawn_fixture,
    write_config,
)

pytestmark = pytest.mark.slow


# --- the container image's command -----------------------------------------------------------


def image_environ(**overrides: str) -> dict[str, str]:
    """The environment `docker run` gives the proxy: the image's ENV over a clean one."""
    image = {k: v for k, v in dockerfile.env(dockerfile.final_stage()).items() if k != "PATH"}
    return {**clean_environ(), **image, **overrides}


def host_command(argv: list[str]) -> list[str]:
    """An image command run here: its `python` is this interpreter."""
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_tests_run_the_images_start_command(tmp_path: Path) -> None:
    assert host_command(dockerfile.image_command()) == serve_command(tmp_path)[:4]


async def test_image_command_serves_answers_its_healthcheck_and_stops_on_its_signal(
    tmp_path: Path, upstream: FakeUpstream, spawn: Any, client: aiohttp.ClientSession
) -> None:
    config = write_config(tmp_path / "providers.yaml", config_doc({"a": upstream}))
    # Loopback instead of the image's 0.0.0.0: tests listen on 127.0.0.1 only.
    environ = image_environ(
        PROXY_CONFIG=str(config),
        PROXY_HOST="127.0.0.1",
        PROXY_PORT=str(free_port()),
        PROXY_API_KEY=PROXY_KEY,
        **KEYS,
    )
    proxy = await spawn(argv=host_command(dockerfile.image_command()), env=environ)
    assert proxy.port == int(environ["PROXY_PORT"])
    assert await readyz(client, proxy) == 200
    assert (await ask(client, proxy)).status == 200

    async def healthcheck() -> int:
        check = await asyncio.create_subprocess_exec(
            *host_command(dockerfile.healthcheck_command()),
            env=environ,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await check.wait()

    assert await healthcheck() == 0
    stop = dockerfile.last(dockerfile.final_stage(), "STOPSIGNAL")
    assert stop is not None
    proxy.send(signal.Signals[stop.args])
    assert await proxy.wait_exit() == 0
    assert await healthcheck() != 0  # the check does fail when nothing answers


async def test_image_defaults_refuse_to_start_open_without_a_proxy_key(spawn: Any) -> None:
    # The image's own environment (0.0.0.0) and the tier table it ships, no PROXY_API_KEY:
    # the proxy must stop before it listens.
    environ = image_environ(PROXY_CONFIG=str(REPO / "providers.yaml"))
    proxy = await spawn(argv=host_command(dockerfile.image_command()), env=environ, listen=False)
    assert await proxy.wait_exit() == 2
    assert "refusing to listen on 0.0.0.0 without proxy keys" in proxy.stderr
