"""The JSON log line per request (SPEC §10): its fields after real traffic, and how logging is
configured (level and format by flag and environment)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.requestlog import JsonFormatter, TextFormatter, configure_logging
from tests.fakes.upstream import (
    Hang,
    Reply,
    Stream,
    UpstreamFactory,
    chat_completion_body,
    chat_stream_events,
)
from tests.harness import ProxyFactory, chat, document, provider, read_sse, scenario_document

FIELDS = {
    "request_id",
    "route",
    "model",
    "stream",
    "status",
    "tier",
    "provider",
    "attempts",
    "ttfb_ms",
    "duration_ms",
    "prompt_tokens",
    "completion_tokens",
}
PROMPT = "MARKER-prompt-text"
ANSWER = "MARKER-answer-text"


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="proxy.access")
    return caplog


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """Every access line as the JSON formatter writes it, parsed back."""
    formatter = JsonFormatter()
    out = []
    for record in caplog.records:
        if record.name == "proxy.access":
            text = formatter.format(record)
            assert "\n" not in text
            out.append(json.loads(text))
    return out


async def wait_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    """The server writes a cancelled request's line a moment after the client left."""
    for _ in range(200):
        found = lines(caplog)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.01)
    return lines(caplog)


def prompt(model: str = "gpt-test", stream: bool = False, **extra: Any) -> dict[str, Any]:
    return chat(model, stream, **extra) | {"messages": [{"role": "user", "content": PROMPT}]}


async def test_one_line_per_request_with_every_field(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory, access: pytest.LogCaptureFixture
) -> None:
    a, b, limited, cut, slow = [
        await upstream_factory(n) for n in ("a", "b", "limited", "cut", "slow")
    ]
    doc = scenario_document(a.base_url, b.base_url, limited.base_url, cut.base_url, slow.base_url)
    proxy = await make_proxy(doc)

    # A stream that fails over from tier 1 to tier 2, with usage.
    a.script(
        Reply(429, json={"error": {"code": "rate_limit_exceeded"}}, headers={"Retry-After": "30"})
    )
    b.script(
        Stream(events=chat_stream_events("gpt-test", [ANSWER], include_usage=True, prompt_tokens=7))
    )
    body = prompt(stream=True, stream_options={"include_usage": True})
    headers = {"x-request-id": "req-42"}
    async with proxy.post("/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status == 200
        await read_sse(response)
    # Every candidate rate-limited: a 429 with no serving provider.
    limited.script(
        Reply(429, json={"error": {"code": "rate_limit_exceeded"}}, headers={"Retry-After": "30"})
    )
    async with proxy.post("/v1/chat/completions", json=prompt("gpt-limited")) as response:
        assert response.status == 429
        request_id = response.headers["x-request-id"]
    # A stream cut after its first event.
    first = chat_stream_events("gpt-cut", ["Hel"], finish_reason=None)[:2]
    cut.script(Stream(events=first, done=False, end="reset"))
    async with proxy.post("/v1/chat/completions", json=prompt("gpt-cut", True)) as response:
        await read_sse(response)
    # A plain answer, and a model nobody configured by that name.
    b.script(Reply(json=chat_completion_body("gpt-test", ANSWER, prompt_tokens=5)))
    async with proxy.post("/v1/chat/completions", json=prompt()) as response:
        assert response.status == 200
    async with proxy.post("/v1/embeddings", json={"model": "nobody", "input": PROMPT}) as response:
        assert response.status == 404
    # A client that leaves.
    slow.script(Hang())
    gone = asyncio.create_task(_read(proxy, prompt("gpt-slow")))
    assert await slow.wait_seen(1)
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone

    found = await wait_lines(access, 6)
    assert len(found) == 6
    failover, limited_line, cut_line, plain, unknown, left = found
    for line in found:
        assert FIELDS <= set(line) <= FIELDS | {"ts", "level", "logger", "msg", "interrupted"}
        assert (line["level"], line["logger"], line["msg"]) == ("info", "proxy.access", "request")
        assert line["ts"].endswith("Z") and line["duration_ms"] >= 0
    assert {k: failover[k] for k in FIELDS - {"ttfb_ms", "duration_ms"}} == {
        "request_id": "req-42",
        "route": "chat_completions",
        "model": "gpt-test",
        "stream": True,
        "status": 200,
        "tier": 2,
        "provider": "b",
        "attempts": ["a:rate_limited", "b:ok"],
        "prompt_tokens": 7,
        "completion_tokens": 1,
    }
    assert 0 <= failover["ttfb_ms"] <= failover["duration_ms"]
    assert "interrupted" not in failover
    assert limited_line | {"duration_ms": 0} == {
        **{k: limited_line[k] for k in ("ts", "level", "logger", "msg")},
        "request_id": request_id,
        "route": "chat_completions",
        "model": "gpt-limited",
        "stream": False,
        "status": 429,
        "tier": None,
        "provider": None,
        "attempts": ["limited:rate_limited"],
        "ttfb_ms": None,
        "duration_ms": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }
    assert (cut_line["status"], cut_line["provider"], cut_line["interrupted"]) == (
        200,
        "cut",
        "reset",
    )
    assert cut_line["attempts"][0] == "cut:ok"
    assert (plain["stream"], plain["prompt_tokens"], plain["completion_tokens"]) == (False, 5, 1)
    assert (unknown["route"], unknown["model"], unknown["status"]) == ("embeddings", "other", 404)
    assert (left["model"], left["status"], left["tier"]) == ("gpt-slow", 499, None)
    assert left["attempts"] == []  # the abandoned attempt never got an outcome

    # Neither the prompt nor the answer, in either format.
    text = TextFormatter()
    for record in access.records:
        for rendered in (JsonFormatter().format(record), text.format(record)):
            assert PROMPT not in rendered and ANSWER not in rendered


async def _read(proxy: Any, body: Any) -> bytes:
    async with proxy.post("/v1/chat/completions", json=body) as response:
        data: bytes = await response.read()
        return data


async def test_requests_answered_without_an_upstream_are_logged(
    make_proxy: ProxyFactory, upstream_factory: UpstreamFactory, access: pytest.LogCaptureFixture
) -> None:
    a = await upstream_factory("a")
    proxy = await make_proxy(document({"a": provider(a.base_url)}))
    assert proxy.session is not None
    async with proxy.session.post(
        proxy.url + "/v1/chat/completions", json=chat(), headers={"x-request-id": "no-key"}
    ) as response:
        assert response.status == 401
    async with proxy.post("/v1/responses", data=b"[1, 2]") as response:
        assert response.status == 400
    async with proxy.get("/v1/models") as response:
        assert response.status == 200
    async with proxy.session.get(proxy.url + "/healthz") as response:
        assert response.status == 200  # probes are not logged

    rejected, bad, models = lines(access)
    assert rejected | {"ts": None, "duration_ms": None} == {
        "ts": None,
        "level": "info",
        "logger": "proxy.access",
        "msg": "request",
        "request_id": "no-key",
        "route": "chat_completions",
        "model": None,
        "stream": None,
        "status": 401,
        "tier": None,
        "provider": None,
        "attempts": [],
        "ttfb_ms": None,
        "duration_ms": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }
    assert (bad["route"], bad["status"]) == ("responses", 400)
    assert (models["route"], models["status"]) == ("models", 200)


async def test_no_line_is_built_below_info(
    make_proxy: ProxyFactory,
    upstream_factory: UpstreamFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = await upstream_factory("a")
    proxy = await make_proxy(document({"a": provider(a.base_url)}))
    caplog.set_level(logging.WARNING, logger="proxy.access")
    built: list[object] = []
    # Building a line rounds the durations: count the calls that would.
    monkeypatch.setattr("proxy.requestlog.round", lambda *a: built.append(a) or 0, raising=False)
    async with proxy.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
    async with proxy.get("/v1/nowhere") as response:
        assert response.status == 404
    assert not [r for r in caplog.records if r.name == "proxy.access"]
    assert built == []


# -- configuration of logging ---------------------------------------------------------------


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    aiohttp_level = logging.getLogger("aiohttp.access").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(aiohttp_level)


@pytest.mark.usefixtures("root_logging")
def test_configure_logging_sets_level_and_format() -> None:
    configure_logging("warning", "text")
    root = logging.getLogger()
    assert root.level == logging.WARNING
    assert [type(h.formatter) for h in root.handlers] == [TextFormatter]
    configure_logging("debug", "json")
    assert root.level == logging.DEBUG
    assert [type(h.formatter) for h in root.handlers] == [JsonFormatter]
    assert logging.getLogger("aiohttp.access").level == logging.WARNING


def _serve_on_busy_port(tmp_path: Path, args: list[str], env: dict[str, str]) -> list[str]:
    """Run `python -m proxy serve` on a port that is taken: it logs and exits at once."""
    config = tmp_path / "providers.yaml"
    doc = document(
        {
            "local": provider("http://127.0.0.1:9/v1"),
            "paid": provider("http://127.0.0.1:9/v1", tier=2, keys=["${PAID_KEY_UNSET}"]),
        }
    )
    config.write_text(yaml.safe_dump(doc))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "proxy",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
                *args,
            ],
            env=environ | env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    return done.stderr.splitlines()


def test_default_log_is_json_lines_at_info(tmp_path: Path) -> None:
    output = _serve_on_busy_port(tmp_path, [], {})
    parsed = [json.loads(line) for line in output]
    assert [(p["level"], p["msg"]) for p in parsed][:1] == [("warning", "provider disabled")]
    assert parsed[0]["provider"] == "paid" and "PAID_KEY_UNSET" in parsed[0]["reason"]
    assert parsed[-1]["level"] == "error" and "cannot listen" in parsed[-1]["msg"]


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--log-format", "text", "--log-level", "error"], {}),
        ([], {"PROXY_LOG_FORMAT": "text", "PROXY_LOG_LEVEL": "error"}),
    ],
    ids=["flags", "environment"],
)
def test_log_format_and_level_by_flag_or_environment(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    output = _serve_on_busy_port(tmp_path, args, env)
    assert len(output) == 1  # the warning is below the level
    assert " ERROR " in output[0] and "cannot listen" in output[0]
    with pytest.raises(json.JSONDecodeError):
        json.loads(output[0])
