"""`make demo`: a fake upstream and the proxy on this machine, and one streamed answer.

Starts `python -m tests.fakes.upstream --port 9901 --name demo` and
`python -m proxy serve --config config/demo.yaml`, waits for the proxy's `/readyz`,
streams one chat answer for `demo-chat` and prints who served it (tier 1 always
rate-limits in this setup, so tier 2 should answer), prints commands to try by hand,
then keeps both processes running until Ctrl-C and stops them cleanly.

Only the standard library and aiohttp: it runs from a bare checkout's virtual env.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
CONFIG = "config/demo.yaml"
UPSTREAM_PORT = 9901
PROXY_PORT = 8000
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
UPSTREAM_URL = f"http://127.0.0.1:{UPSTREAM_PORT}/v1"
# The demo pins the proxy key so the commands it prints work whatever the shell has set.
PROXY_KEY = "demo-key"
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


class DemoError(Exception):
    """A step of the demo failed; the message says what happened and what to do."""


class Children:
    """The demo's child processes, the tasks relaying their output, and how to stop them."""

    def __init__(self) -> None:
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._relays: set[asyncio.Task[None]] = set()

    async def start(self, label: str, *args: str, env: dict[str, str]) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Its own session: Ctrl-C reaches only the demo, which then stops each child
            # with SIGTERM (the proxy's graceful shutdown) instead of a KeyboardInterrupt.
            start_new_session=True,
            limit=1 << 20,
        )
        self._processes[label] = process
        assert process.stdout is not None
        self._relays.add(asyncio.create_task(_relay(label, process.stdout)))

    def returncode(self, label: str) -> int | None:
        return self._processes[label].returncode

    async def wait_any(self) -> tuple[str, int]:
        """Wait until one child exits; its label and exit code."""
        waits = {asyncio.create_task(p.wait()): label for label, p in self._processes.items()}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        first = done.pop()
        return waits[first], first.result()

    def kill(self) -> None:
        for process in self._processes.values():
            if process.returncode is None:
                process.kill()

    async def stop(self) -> None:
        """SIGTERM every child, newest first (the proxy before its upstream), then SIGKILL
        whatever is still running after STOP_TIMEOUT."""
        for label, process in reversed(self._processes.items()):
            if process.returncode is not None:
                continue
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                print(f"demo: the {label} did not stop within {STOP_TIMEOUT:.0f} s; killing it")
                process.kill()
                await process.wait()
        # Every pipe is closed now, so the relays end on their own.
        if self._relays:
            _, pending = await asyncio.wait(self._relays, timeout=2)
            for task in pending:
                task.cancel()


async def _relay(label: str, stream: asyncio.StreamReader) -> None:
    async for line in stream:
        print(f"  [{label}] {line.decode(errors='replace').rstrip()}", flush=True)


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The shell's own settings must not steer the demo elsewhere.
    for name in list(env):
        if name.startswith("PROVIDER_PRIORITY_"):
            del env[name]
    env.update(
        PROXY_API_KEY=PROXY_KEY,
        PROXY_HOST="127.0.0.1",
        PROXY_PORT=str(PROXY_PORT),
        PYTHONUNBUFFERED="1",
    )
    return env


async def _wait_ready(children: Children, label: str, url: str) -> None:
    """Poll `url` until it answers 200; fail early if the child exits."""
    loop = asyncio.get_running_loop()
    deadline, last = loop.time() + READY_TIMEOUT, "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            code = children.returncode(label)
            if code is not None:
                raise DemoError(
                    f"the {label} exited with code {code} before {url} answered 200; "
                    "its output is above"
                )
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = type(exc).__name__
            if loop.time() > deadline:
                raise DemoError(
                    f"{url} did not answer 200 within {READY_TIMEOUT:.0f} s (last: {last})"
                )
            await asyncio.sleep(0.2)


def split_events(buffer: bytes) -> tuple[list[str], bytes]:
    """The `data` of each complete SSE event in `buffer`, and the unfinished rest."""
    *complete, rest = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
    found = []
    for event in complete:
        lines = [
            line.removeprefix(b"data:").removeprefix(b" ")
            for line in event.split(b"\n")
            if line.startswith(b"data:")
        ]
        if lines:
            found.append(b"\n".join(lines).decode(errors="replace"))
    return found, rest


def _text_of(data: str) -> str:
    """The text an event adds to the answer; an error event is shown as such."""
    try:
        event = json.loads(data)
    except ValueError:
        return ""
    if not isinstance(event, dict):
        return ""
    if "error" in event:
        return f"\n  [stream error: {json.dumps(event['error'])}]"
    parts = [
        choice.get("delta", {}).get("content") or ""
        for choice in event.get("choices") or []
        if isinstance(choice, dict)
    ]
    return "".join(parts)


async def _stream_once() -> None:
    body = {
        "model": "demo-chat",
        "stream": True,
        "messages": [{"role": "user", "content": "Say hello"}],
    }
    headers = {"Authorization": f"Bearer {PROXY_KEY}"}
    print(f"\nPOST {PROXY_URL}/v1/chat/completions  (model demo-chat, stream)")
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(f"{PROXY_URL}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        if resp.status != 200:
            text = (await resp.text())[:1000]
            raise DemoError(f"the proxy answered HTTP {resp.status}: {text}")
        print("  answer: ", end="", flush=True)
        pending = b""
        async for chunk in resp.content.iter_any():
            events, pending = split_events(pending + chunk)
            for data in events:
                if data == "[DONE]":
                    break
                print(_text_of(data), end="", flush=True)
        print()
        for name in ("x-proxy-provider", "x-proxy-tier", "x-proxy-attempts"):
            print(f"  {name}: {resp.headers.get(name, '(not set)')}")
    print("  (tier 1, premium, always answers 429 here: tier 2, standard, should serve it)")


def _print_try_it() -> None:
    python = sys.executable
    print(
        f"""
The proxy is at {PROXY_URL}/v1 (key {PROXY_KEY}). Try it:

  curl -N {PROXY_URL}/v1/chat/completions \\
    -H "Authorization: Bearer {PROXY_KEY}" -H "Content-Type: application/json" \\
    -d '{{"model": "demo-chat", "stream": true, "messages": [{{"role": "user", "content": "Hi"}}]}}'

  OPENAI_BASE_URL={PROXY_URL}/v1 OPENAI_API_KEY={PROXY_KEY} {python} -c '
from openai import OpenAI
stream = OpenAI().chat.completions.create(
    model="demo-chat", stream=True, messages=[{{"role": "user", "content": "Hi"}}])
for chunk in stream:
    for choice in chunk.choices:
        print(choice.delta.content or "", end="", flush=True)
print()'

  curl -s {PROXY_URL}/metrics | grep ^llmproxy_

Any other model name goes to the catch-all tier 5 (free). Ctrl-C stops everything.""",
        flush=True,
    )


async def _demo(children: Children) -> int:
    env = _child_env()
    upstream_args = ["-m", "tests.fakes.upstream", "--port", str(UPSTREAM_PORT), "--name", "demo"]
    await children.start("upstream", *upstream_args, env=env)
    await _wait_ready(children, "upstream", f"{UPSTREAM_URL}/models")
    await children.start("proxy", "-m", "proxy", "serve", "--config", CONFIG, env=env)
    await _wait_ready(children, "proxy", f"{PROXY_URL}/readyz")
    await _stream_once()
    _print_try_it()
    label, code = await children.wait_any()
    print(f"demo: the {label} exited unexpectedly with code {code}; stopping", file=sys.stderr)
    return 1


async def _run() -> int:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    children = Children()
    stopping = False

    def interrupt() -> None:
        nonlocal stopping
        if stopping:  # a second Ctrl-C: no more waiting
            children.kill()
        else:
            stopping = True
            main_task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt)
    try:
        return await _demo(children)
    except asyncio.CancelledError:
        if not stopping:
            raise
        main_task.uncancel()
        print("\ndemo: stopping", flush=True)
        return 0
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        await children.stop()


def main() -> int:
    for label, port in (("fake upstream", UPSTREAM_PORT), ("proxy", PROXY_PORT)):
        if _port_in_use(port):
            print(
                f"demo: port {port} (for the {label}) is already in use; stop what listens "
                "there and run the demo again",
                file=sys.stderr,
            )
            return 1
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_run())
    return 130


if __name__ == "__main__":
    sys.exit(main())
