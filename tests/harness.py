"""An in-process proxy on a real socket, built from a config document, for functional tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from proxy.config import parse_settings
from proxy.gateway import Gateway
from proxy.metrics import Metrics
from proxy.server import ProxyServer
from tests.fakes.upstream import FakeUpstream, UpstreamFactory

PROXY_KEY = "test-proxy-key"
AUTH = {"Authorization": f"Bearer {PROXY_KEY}"}

# Fast failure handling so fault tests take milliseconds, not the production defaults.
FAST_DEFAULTS: dict[str, Any] = {
    "timeouts": {"connect": 2, "first_byte": 2, "idle": 2, "total": 20},
    "cooldown": {"initial": 1, "max": 300, "auth": 3600},
    "breaker": {"failures": 5, "open_seconds": 30},
    "max_wait": 0,
}


def provider(
    base_url: str,
    tier: int = 1,
    keys: list[Any] | None = None,
    models: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {"tier": tier, "base_url": base_url}
    if keys is not None:
        doc["keys"] = keys
    doc["models"] = models if models is not None else ["*"]
    doc.update(extra)
    return doc


def document(
    providers: Mapping[str, dict[str, Any]],
    defaults: Mapping[str, Any] | None = None,
    **server: Any,
) -> dict[str, Any]:
    merged_defaults = dict(FAST_DEFAULTS)
    if defaults:
        merged_defaults.update(defaults)
    server_doc: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "api_keys": [PROXY_KEY]}
    server_doc.update(server)
    return {"server": server_doc, "defaults": merged_defaults, "providers": dict(providers)}


class ProxyHarness:
    """A started ProxyServer on 127.0.0.1 with its own metrics registry and client session."""

    def __init__(self, doc: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
        self.settings = parse_settings(dict(doc), dict(environ or {}), "test")
        self.metrics = Metrics()
        self.server = ProxyServer(Gateway(self.settings), self.metrics)
        self.metrics.bind(self.server)
        self._runner: web.ServerRunner | None = None
        self.port = 0
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        await self.server.start()
        self._runner = web.ServerRunner(self.server.web_server(), handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]
        self.session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def post(
        self, path: str, json: Any = None, headers: Mapping[str, str] | None = None, **kw: Any
    ) -> Any:
        assert self.session is not None
        merged = dict(AUTH)
        if headers is not None:
            merged.update(headers)
        return self.session.post(self.url + path, json=json, headers=merged, **kw)

    def get(self, path: str, headers: Mapping[str, str] | None = None, **kw: Any) -> Any:
        assert self.session is not None
        merged = dict(AUTH)
        if headers is not None:
            merged.update(headers)
        return self.session.get(self.url + path, headers=merged, **kw)

    async def metrics_text(self) -> str:
        assert self.session is not None
        async with self.session.get(self.url + "/metrics") as response:
            return await response.text()


def chat(model: str = "gpt-test", stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello"}],
    }
    if stream:
        body["stream"] = True
    body.update(extra)
    return body


async def read_sse(response: aiohttp.ClientResponse) -> list[bytes]:
    """The `data:` payloads of an SSE body, in order (comments skipped)."""
    raw = await response.read()
    out: list[bytes] = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                out.append(line[6:])
    return out


ProxyFactory = Callable[..., Awaitable[ProxyHarness]]


async def two_tiers(
    make_proxy: ProxyFactory,
    upstream_factory: UpstreamFactory,
    defaults: Mapping[str, Any] | None = None,
    **server: Any,
) -> tuple[ProxyHarness, FakeUpstream, FakeUpstream]:
    """`primary` (tier 1, key k1) and its fallback `backup` (tier 2, key b1) behind a proxy."""
    primary = await upstream_factory("primary")
    backup = await upstream_factory("backup")
    providers = {
        "primary": provider(primary.base_url, keys=["k1"]),
        "backup": provider(backup.base_url, tier=2, keys=["b1"]),
    }
    proxy = await make_proxy(document(providers, defaults, **server))
    return proxy, primary, backup


def scenario_document(a: str, b: str, limited: str, cut: str, slow: str) -> dict[str, Any]:
    """Five providers for the traffic scenarios of the metrics and log tests: `a` (tier 1,
    one key) and `b` (tier 2) serve gpt-test; `limited`, `cut` and `slow` each serve a model
    of their own. Arguments are the fakes' base URLs."""
    return document(
        {
            "a": provider(a, keys=["key-a"], models=["gpt-test"]),
            "b": provider(b, tier=2, models=["gpt-test"]),
            "limited": provider(limited, keys=["key-l"], models=["gpt-limited"]),
            "cut": provider(cut, models=["gpt-cut"]),
            "slow": provider(slow, models=["gpt-slow"]),
        }
    )
