"""The processes a benchmark run starts: where they run, when they are ready, what they weigh.

Every server is its own process. On a machine with two cores or more the server under test is
pinned to core 0 and everything else (fast upstream, load generators, the runner itself) to the
other cores with `taskset`, so the proxy gets one whole core and nothing else does.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench.stats import vm_kib

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which cores the server under test and everything else run on (None: not pinned)."""

    server: str | None
    load: str | None

    @classmethod
    def detect(cls) -> Pinning:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(cores) < 2 or shutil.which("taskset") is None:
            return cls(None, None)
        return cls(str(cores[0]), ",".join(str(c) for c in cores[1:]))

    def describe(self) -> str:
        if self.server is None:
            return "not pinned (needs Linux, taskset and two cores or more)"
        return (
            f"server under test pinned to core {self.server}; fast upstream, load generators "
            f"and runner pinned to core(s) {self.load} (taskset)"
        )

    def wrap(self, argv: list[str], role: str) -> list[str]:
        cpus = self.server if role == "server" else self.load
        return argv if cpus is None else ["taskset", "-c", cpus, *argv]

    def pin_self(self) -> None:
        if self.load is not None:
            os.sched_setaffinity(0, {int(c) for c in self.load.split(",")})


def cpu_busy(seconds: float = 1.0) -> float | None:
    """The share of all cores busy over `seconds`, from /proc/stat (None off Linux).

    Unlike the load average, which decays over minutes, this says whether the machine is
    quiet right now.
    """

    def sample() -> tuple[int, int] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    before = sample()
    time.sleep(seconds)
    after = sample()
    if before is None or after is None or after[0] == before[0]:
        return None
    return 1.0 - (after[1] - before[1]) / (after[0] - before[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """The status of a GET, or None when nothing answers yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (nginx workers, LiteLLM's uvicorn), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def tree_kib(pid: int, field_name: str) -> int | None:
    """`VmRSS`/`VmHWM` of a process and its descendants, summed, in KiB."""
    total = 0
    found = False
    for each in [pid, *_children(pid)]:
        try:
            value = vm_kib(Path(f"/proc/{each}/status").read_text(), field_name)
        except OSError:
            continue
        if value is not None:
            total += value
            found = True
    return total if found else None


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process and its descendants, from /proc/<pid>/stat."""
    total = 0
    found = False
    for each in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        found = True
    return total / _TICK if found else None


@dataclass
class Target:
    """One thing the load is sent to: the upstream itself ("direct"), the proxy, a reference."""

    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    startup_s: float | None = None
    idle_rss_kib: int | None = None
    auth: str = "sk-bench-proxy-key"
    cpu_pid: int | None = None  # whose CPU time a run is charged to (default: `proc`)
    notes: list[str] = field(default_factory=list)

    def url(self, path: str = "/v1/chat/completions") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def rss_kib(self) -> int | None:
        return tree_kib(self.proc.pid, "VmRSS") if self.proc is not None else None

    def hwm_kib(self) -> int | None:
        return tree_kib(self.proc.pid, "VmHWM") if self.proc is not None else None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server (and its children) so far."""
        pid = self.cpu_pid if self.cpu_pid is not None else (self.proc.pid if self.proc else None)
        return None if pid is None else tree_cpu_seconds(pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        stop(self.proc)


def stop(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def launch(
    name: str,
    argv: list[str],
    port: int,
    ready_path: str,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    log: Path | None = None,
    cwd: Path = REPO,
) -> Target:
    """Start a server and wait for a 200 on `ready_path`; the wait is its start-up time."""
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} before it was ready")
        if http_status(port, ready_path, timeout=2.0) == 200:
            startup = time.perf_counter() - started
            return Target(name, port, proc, startup, tree_kib(proc.pid, "VmRSS"))
        time.sleep(0.002)
    stop(proc)
    raise RuntimeError(f"{name} was not ready on :{port}{ready_path} within {timeout:.0f} s")


def python_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def start_upstream(pinning: Pinning, workdir: Path) -> Target:
    port = free_port()
    argv = [sys.executable, "-m", "tests.bench.fastupstream", "--port", str(port)]
    return launch(
        "upstream",
        pinning.wrap(argv, "load"),
        port,
        "/readyz",
        env=python_env(),
        log=workdir / "upstream.log",
    )


def proxy_config(path: Path, port: int, upstream_port: int) -> Path:
    path.write_text(
        "# generated by tests/bench/targets.py\n"
        "server:\n"
        "  host: 127.0.0.1\n"
        f"  port: {port}\n"
        '  api_keys: ["sk-bench-proxy-key"]\n'
        "providers:\n"
        "  bench:\n"
        f"    base_url: http://127.0.0.1:{upstream_port}/v1\n"
        '    keys: ["sk-bench-upstream-key"]\n'
        '    models: ["*"]\n'
    )
    return path


def start_proxy(
    pinning: Pinning, workdir: Path, upstream_port: int, log_level: str, tag: str = "proxy"
) -> Target:
    port = free_port()
    config = proxy_config(workdir / f"{tag}.yaml", port, upstream_port)
    argv = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(config),
        "--log-level",
        log_level,
    ]
    target = launch(
        "proxy",
        pinning.wrap(argv, "server"),
        port,
        "/readyz",
        env=python_env(),
        log=workdir / f"{tag}.log",
    )
    return target


def start_bare(pinning: Pinning, workdir: Path, upstream_port: int) -> Target:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "tests.bench.bare",
        "--port",
        str(port),
        "--upstream",
        f"http://127.0.0.1:{upstream_port}",
    ]
    return launch(
        "bare",
        pinning.wrap(argv, "server"),
        port,
        "/readyz",
        env=python_env(),
        log=workdir / "bare.log",
    )


def measure_startups(
    pinning: Pinning, workdir: Path, upstream_port: int, log_level: str, count: int
) -> tuple[list[float], list[int]]:
    """Start fresh proxies `count` times: seconds to the first 200 on /readyz, and idle RSS."""
    times: list[float] = []
    rss: list[int] = []
    for i in range(count):
        target = start_proxy(pinning, workdir, upstream_port, log_level, tag=f"startup{i}")
        try:
            assert target.startup_s is not None
            times.append(target.startup_s)
            time.sleep(0.3)  # let start-up allocations settle before reading idle RSS
            with contextlib.suppress(TypeError):
                rss.append(int(target.rss_kib()))  # type: ignore[arg-type]
        finally:
            target.stop()
    return times, rss
