"""The shipped Prometheus and Grafana files against a running proxy: promtool checks, every
metric and label the rules and the dashboard use is really exported, and a real Prometheus
server scrapes the proxy with the shipped config and answers for the fallback rate.

promtool and prometheus come from Debian's `prometheus` package (.ci/run installs it). Without
them these tests skip locally and fail in CI (CI=true).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.fakes.upstream import FakeUpstream, Reply, UpstreamFactory
from tests.functional.scrape import Scrape
from tests.harness import ProxyFactory, ProxyHarness, chat, document, provider

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "config" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
KUBERNETES_CONFIG = PROMETHEUS_DIR / "prometheus-kubernetes.yml"
DASHBOARD = ROOT / "config" / "grafana" / "llmproxy-dashboard.json"
# Labels Prometheus adds to every scraped series, and the histogram bucket bound.
TARGET_LABELS = {"job", "instance", "service", "le"}
# How the dashboard's Grafana variables read when its queries are sent to Prometheus as is.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package `prometheus`; .ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def rule_expressions() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule["expr"] for group in doc["groups"] for rule in group["rules"]}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_expressions() -> dict[str, str]:
    out: dict[str, str] = {}
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} / {target['refId']}"] = target["expr"]
    return out


def as_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr.replace("$labels", "").replace("$value", ""), expr
    return expr


def all_expressions() -> dict[str, str]:
    return {**rule_expressions(), **dashboard_expressions()}


@dataclass
class Setup:
    """A two-tier proxy whose tier-1 upstream the test scripts."""

    proxy: ProxyHarness
    tier1: FakeUpstream

    async def fallbacks(self, count: int = 1) -> None:
        """`count` requests that tier 1 rate-limits and tier 2 answers."""
        for _ in range(count):
            self.tier1.script(
                Reply(429, json={"error": {"code": "x"}}, headers={"retry-after-ms": "50"})
            )
            async with self.proxy.post("/v1/chat/completions", json=chat()) as response:
                assert response.status == 200 and response.headers["x-proxy-tier"] == "2"
            await asyncio.sleep(0.06)  # the key's cooldown ends: the next request tries it


@pytest.fixture
async def setup(make_proxy: ProxyFactory, upstream_factory: UpstreamFactory) -> Setup:
    tier1, tier2 = await upstream_factory("tier1"), await upstream_factory("tier2")
    doc = document(
        {
            "premium": provider(tier1.base_url, keys=["k1"], models=["gpt-test"]),
            "backup": provider(tier2.base_url, tier=2, models=["gpt-test"], continuation="prefill"),
        }
    )
    return Setup(await make_proxy(doc), tier1)


# -- promtool -------------------------------------------------------------------------------


def test_alert_rules_pass_promtool() -> None:
    done = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in done.stdout


def test_scrape_config_passes_promtool() -> None:
    done = subprocess.run(
        [tool("promtool"), "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_metrics_output_passes_promtool(setup: Setup) -> None:
    promtool = tool("promtool")
    await setup.fallbacks()
    text = await setup.proxy.metrics_text()
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == ""  # no lint remark either


# -- the rules and the dashboard use what the proxy exports ---------------------------------

_METRIC = re.compile(r"\bllmproxy_[a-zA-Z0-9_]+")
_SELECTOR = re.compile(r"\b(llmproxy_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def exported_labels(scrape: Scrape) -> dict[str, set[str]]:
    """Sample name -> the label names it carries."""
    labels: dict[str, set[str]] = {}
    for name in scrape.sample_names():
        for sample in scrape.samples(name):
            labels.setdefault(name, set()).update(sample.labels)
    return labels


async def test_every_metric_and_label_in_rules_and_dashboard_is_exported(setup: Setup) -> None:
    await setup.fallbacks()
    exported = exported_labels(Scrape(await setup.proxy.metrics_text()))
    expressions = all_expressions()
    assert len(expressions) >= 25
    used: set[str] = set()
    for where, expr in expressions.items():
        names = set(_METRIC.findall(expr))
        assert names, f"{where}: uses no llmproxy metric"
        missing = names - set(exported)
        assert not missing, f"{where}: not exported: {missing}"
        used |= names
        for name, matchers in _SELECTOR.findall(expr):
            for label in _MATCHER_LABEL.findall(matchers):
                assert label in exported[name] | TARGET_LABELS, f"{where}: {name} has no {label}"
        known = set().union(*(exported[n] for n in names)) | TARGET_LABELS
        for group in _GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in group.split(","))):
                assert label in known, f"{where}: no metric of it has label {label}"
    # Every SPEC §9 family shows up somewhere.
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
    assert families >= {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in exported}


def test_dashboard_is_well_formed_and_covers_the_brief() -> None:
    board = dashboard()
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
            assert panel.get("description"), panel["title"]
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "job", "instance"}
    exprs = list(dashboard_expressions().values())

    def has(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs)

    assert has(r"sum by \(tier\) \(rate\(llmproxy_request_duration_seconds_count")  # traffic/tier
    assert has(r"by \([^)]*reason[^)]*\) \(rate\(llmproxy_fallbacks_total")  # fallbacks/reason
    for q in ("0.5", "0.95", "0.99"):  # TTFB quantiles per provider
        assert has(
            rf"histogram_quantile\({q}, sum by \(provider, le\) \(rate\(llmproxy_upstream_ttfb"
        )
    assert has(r"llmproxy_tokens_total")
    assert has(r"sum by \(provider, state\) \(llmproxy_keys")
    assert has(r'llmproxy_requests_total\{[^}]*status=~"5\.\."')


# -- the Kubernetes variant ------------------------------------------------------------------


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus relabelling, as much of it as the shipped file uses (None: dropped)."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        regex = re.compile(rule.get("regex", "(.*)"))
        if action == "labelmap":
            for name in list(labels):
                match = regex.fullmatch(name)
                if match:
                    labels[match.expand(rule.get("replacement", "$1").replace("$", "\\"))] = labels[
                        name
                    ]
            continue
        value = ";".join(labels.get(s, "") for s in rule.get("source_labels", []))
        match = regex.fullmatch(value)
        if action == "keep" and not match:
            return None
        if action == "drop" and match:
            return None
        if action == "replace" and match:
            replacement = re.sub(r"\$(\d)", r"\\\1", rule.get("replacement", "$1"))
            labels[rule["target_label"]] = match.expand(replacement)
    return {k: v for k, v in labels.items() if not k.startswith("__meta_")}


def pod(ip: str, container_port: str | None, **annotations: str) -> dict[str, str]:
    labels = {
        "__address__": f"{ip}:{container_port}" if container_port else ip,
        "__metrics_path__": "/metrics",
        "__scheme__": "http",
        "__meta_kubernetes_namespace": "shop",
        "__meta_kubernetes_pod_name": "checkout-7d9",
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_label_app": "checkout",
    }
    if container_port:
        labels["__meta_kubernetes_pod_container_port_number"] = container_port
    for name, value in annotations.items():
        labels[f"__meta_kubernetes_pod_annotation_prometheus_io_{name}"] = value
    return labels


def test_kubernetes_variant_scrapes_annotated_pods_on_their_annotated_port() -> None:
    # Debian's promtool is built without Kubernetes discovery, so the relabelling is checked
    # here by applying it, the way Prometheus does, to the labels discovery gives a pod.
    config = yaml.safe_load(KUBERNETES_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    rules = job["relabel_configs"]

    annotated = {"scrape": "true", "port": "8000", "path": "/metrics"}
    # The app's container port and the proxy's collapse into one target: the proxy's.
    app = relabel(pod("10.1.2.3", "8080", **annotated), rules)
    sidecar = relabel(pod("10.1.2.3", "8000", **annotated), rules)
    assert app == sidecar
    assert app is not None
    assert (app["__address__"], app["__metrics_path__"]) == ("10.1.2.3:8000", "/metrics")
    assert (app["namespace"], app["pod"], app["app"]) == ("shop", "checkout-7d9", "checkout")
    ipv6 = relabel(pod("fd00::1:2", None, scrape="true", port="8000"), rules)
    assert ipv6 is not None and ipv6["__address__"] == "[fd00::1:2]:8000"
    custom = relabel(pod("10.1.2.3", None, scrape="true", port="9100", path="/m"), rules)
    assert custom is not None and custom["__metrics_path__"] == "/m"
    assert relabel(pod("10.1.2.3", "8000", port="8000"), rules) is None  # not annotated
    assert relabel(pod("10.1.2.3", "8000", scrape="false", port="8000"), rules) is None
    pending = pod("10.1.2.3", "8000", **annotated) | {"__meta_kubernetes_pod_phase": "Pending"}
    assert relabel(pending, rules) is None


# -- a real Prometheus server ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def prometheus_server(tmp_path: Path, proxy_port: int) -> AsyncIterator[str]:
    """Prometheus on 127.0.0.1 with the shipped config pointed at the proxy, scraping every
    second; yields its base URL once it is ready."""
    binary = tool("prometheus")
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    (job,) = config["scrape_configs"]
    job |= {"scrape_interval": "1s", "scrape_timeout": "1s"}
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{proxy_port}"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await poll(session, url + "/-/ready", lambda status, _: status == 200)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        # Its own complaints, if any, explain a failure better than a timeout does.
        print((tmp_path / "prometheus.log").read_text(errors="replace"))


async def poll(
    session: aiohttp.ClientSession, url: str, done: Any, params: Any = None, limit: float = 20
) -> Any:
    """GET `url` until `done(status, json_or_none)` holds; the last body. Bounded."""
    body: Any = None
    async with asyncio.timeout(limit):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url, params=params) as response:
                    is_json = response.content_type == "application/json"
                    body = await response.json() if is_json else None
                    if done(response.status, body):
                        return body
            await asyncio.sleep(0.1)


def vector(body: Any) -> list[dict[str, Any]]:
    if not body or body.get("status") != "success":
        return []
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def test_real_prometheus_scrapes_the_proxy_and_answers_the_fallback_rate(
    setup: Setup, tmp_path: Path
) -> None:
    async with (
        prometheus_server(tmp_path, setup.proxy.port) as url,
        aiohttp.ClientSession() as session,
    ):
        query = url + "/api/v1/query"

        async def ask(expr: str, want: Any) -> list[dict[str, Any]]:
            body = await poll(session, query, lambda s, b: want(vector(b)), {"query": expr})
            return vector(body)

        # The first scrape sees every counter at zero (Prometheus 2.42 hands static targets to
        # its scraper after ~5 s, most of this test's time); then requests that fall back.
        await ask('up{job="llmproxy"}', lambda v: v and v[0]["value"][1] == "1")
        await ask("llmproxy_fallbacks_total", lambda v: len(v) > 0)
        await setup.fallbacks(3)

        rate = "sum by (from_tier, to_tier, reason) (rate(llmproxy_fallbacks_total[1m])) > 0"
        (series,) = await ask(rate, lambda v: len(v) > 0)
        assert series["metric"] == {"from_tier": "1", "to_tier": "2", "reason": "rate_limited"}
        assert float(series["value"][1]) > 0
        # Every request fell back once: the alert's ratio is exactly 1.
        ratio = (
            "sum(rate(llmproxy_fallbacks_total[1m]))"
            ' / sum(rate(llmproxy_requests_total{route!="models"}[1m]))'
        )
        (value,) = await ask(ratio, lambda v: len(v) > 0)
        assert float(value["value"][1]) == pytest.approx(1.0)

        # Every rule and dashboard query is valid PromQL that Prometheus evaluates.
        for where, expr in all_expressions().items():
            async with session.get(query, params={"query": as_promql(expr)}) as response:
                body = await response.json()
                assert body["status"] == "success", (where, body)
        # The rules loaded and evaluate without error.
        rules = await poll(
            session,
            url + "/api/v1/rules",
            lambda s, b: (
                s == 200
                and all(
                    r["health"] == "ok" and r["lastEvaluation"][:4] != "0001"
                    for g in b["data"]["groups"]
                    for r in g["rules"]
                )
            ),
        )
        names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert names == set(rule_expressions())
        # No `_created` series: they would double the cost of every counter.
        created = await ask('count({__name__=~"llmproxy_.*_created"})', lambda v: True)
        assert created == []
