"""The Kubernetes manifests in config/k8s: schema-valid for a current Kubernetes, wired to
each other (selectors, ports, names), and carrying a tier table the proxy itself accepts.

Built-in kinds are validated with `kubernetes-validate` (strict: unknown fields are errors)
against the newest Kubernetes version it ships schemas for. The ServiceMonitor is a CRD with
no schema there; it is checked for the fields the Prometheus Operator needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, parse_settings

K8S = Path(__file__).resolve().parents[2] / "config" / "k8s"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# Values for the Secret's variables while checking the tier table.
ENVIRON = {
    "PROXY_API_KEY": "proxy-key",
    "OPENAI_API_KEY": "sk-test",
    "GROQ_API_KEY": "gsk-test",
    "OPENROUTER_API_KEY": "or-test",
}

try:
    import kubernetes_validate
except ImportError:  # pragma: no cover - a dev dependency
    kubernetes_validate = None


def load_all() -> list[tuple[str, dict[str, Any]]]:
    """(file relative to config/k8s, document) for every manifest."""
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((str(path.relative_to(K8S)), doc))
    return out


MANIFESTS = load_all()


def variant(name: str) -> dict[str, dict[str, Any]]:
    """The manifests of `sidecar` or `standalone`, by kind."""
    docs = [doc for file, doc in MANIFESTS if file.startswith(name + "/")]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs), f"{name}: one manifest of each kind"
    return by_kind


def pod_containers(deployment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def proxy_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (found,) = [c for c in pod_containers(deployment) if "llmproxy" in c["image"]]
    return found


def container_port(container: dict[str, Any], ref: str | int) -> int:
    for port in container["ports"]:
        if ref in (port["name"], port["containerPort"]):
            return int(port["containerPort"])
    raise AssertionError(f"port {ref!r} is not declared by {container['name']}")


def tier_table(configmap: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
    document = yaml.safe_load(configmap["data"]["providers.yaml"])
    return parse_settings(document, ENVIRON if environ is None else environ, "configmap")


def prestop_seconds(container: dict[str, Any]) -> int:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


def kubernetes_version() -> str:
    if kubernetes_validate is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubernetes-validate is missing: install the dev dependencies")
        pytest.skip("kubernetes-validate is not installed")
    from kubernetes_validate.utils import latest_version

    return str(latest_version())


# --- schema --------------------------------------------------------------------------------


def test_both_variants_are_present() -> None:
    assert set(variant("sidecar")) == {"ConfigMap", "Secret", "Deployment"}
    assert set(variant("standalone")) == {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
    }


def test_validates_against_a_current_kubernetes() -> None:
    version = kubernetes_version()
    major, minor = (int(part) for part in version.split(".")[:2])
    assert (major, minor) >= (1, 33), f"kubernetes-validate ships schemas only up to {version}"


@pytest.mark.parametrize(
    ("file", "doc"),
    [(f, d) for f, d in MANIFESTS if (d["apiVersion"], d["kind"]) not in CRDS],
    ids=[f"{f}:{d['kind']}" for f, d in MANIFESTS if (d["apiVersion"], d["kind"]) not in CRDS],
)
def test_manifest_is_schema_valid_and_strict(file: str, doc: dict[str, Any]) -> None:
    version = kubernetes_version()
    assert kubernetes_validate is not None
    kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    version = kubernetes_version()
    assert kubernetes_validate is not None
    broken = yaml.safe_load((K8S / "standalone" / "service.yaml").read_text())
    broken["spec"]["ports"][0]["targetPort_"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


# --- the ServiceMonitor ------------------------------------------------------------------


def test_servicemonitor_selects_the_service_and_scrapes_its_metrics_port() -> None:
    standalone = variant("standalone")
    monitor, service = standalone["ServiceMonitor"], standalone["Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= service["metadata"]["labels"].items()
    port_names = {port["name"] for port in service["spec"]["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints
    for endpoint in endpoints:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"


# --- wiring --------------------------------------------------------------------------------


def test_standalone_selectors_and_targets_match_the_pods() -> None:
    standalone = variant("standalone")
    deployment = standalone["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert standalone["Service"]["spec"]["selector"].items() <= pod_labels.items()
    pdb = standalone["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= pod_labels.items()
    target = standalone["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # Utilization is a share of the request: without one the autoscaler cannot work.
    assert "cpu" in proxy_container(deployment)["resources"]["requests"]
    # The autoscaler owns the replica count; a re-apply must not reset it.
    assert "replicas" not in deployment["spec"]
    assert standalone["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
    service_port = standalone["Service"]["spec"]["ports"][0]
    assert container_port(proxy_container(deployment), service_port["targetPort"]) == 8000


@pytest.mark.parametrize("name", ["sidecar", "standalone"])
def test_proxy_container_probes_config_secret_and_hardening(name: str) -> None:
    manifests = variant(name)
    deployment = manifests["Deployment"]
    proxy = proxy_container(deployment)
    settings = tier_table(manifests["ConfigMap"])
    port = settings.server.port
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container_port(proxy, proxy[probe]["httpGet"]["port"]) == port
    # The keys come from the Secret as environment variables.
    sources = [source["secretRef"]["name"] for source in proxy["envFrom"]]
    assert sources == [manifests["Secret"]["metadata"]["name"]]
    assert set(manifests["Secret"]["stringData"]) >= set(ENVIRON)
    # The ConfigMap is mounted as the directory the image reads, never through subPath:
    # a subPath mount receives no updates, and the proxy could not reload.
    (mount,) = proxy["volumeMounts"]
    assert mount["mountPath"] == "/etc/proxy" and "subPath" not in mount
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["configMap"]["name"] == manifests["ConfigMap"]["metadata"]["name"]
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    security = proxy["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"requests", "limits"} <= set(proxy["resources"])


@pytest.mark.parametrize("name", ["sidecar", "standalone"])
def test_termination_grace_covers_prestop_and_the_drain(name: str) -> None:
    manifests = variant(name)
    deployment = manifests["Deployment"]
    grace = tier_table(manifests["ConfigMap"]).server.shutdown_grace_seconds
    pod_grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # Past terminationGracePeriodSeconds the kubelet sends SIGKILL: streams would be cut
    # with no error event. The preStop sleep counts against the same budget.
    assert pod_grace > prestop_seconds(proxy_container(deployment)) + grace


def test_standalone_keeps_serving_while_endpoints_are_removed() -> None:
    proxy = proxy_container(variant("standalone")["Deployment"])
    assert prestop_seconds(proxy) >= 3


def test_sidecar_app_talks_to_the_proxy_over_loopback_with_the_proxy_key() -> None:
    sidecar = variant("sidecar")
    deployment = sidecar["Deployment"]
    pod = deployment["spec"]["template"]
    port = tier_table(sidecar["ConfigMap"]).server.port
    (app,) = pod["spec"]["containers"]
    env = {item["name"]: item for item in app["env"]}
    assert env["OPENAI_BASE_URL"]["value"] == f"http://127.0.0.1:{port}/v1"
    key = env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert (key["name"], key["key"]) == (sidecar["Secret"]["metadata"]["name"], "PROXY_API_KEY")
    # A native sidecar: started before the app, stopped after it.
    (proxy,) = pod["spec"]["initContainers"]
    assert proxy["restartPolicy"] == "Always"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


# --- the tier table in the ConfigMaps ------------------------------------------------------


@pytest.mark.parametrize("name", ["sidecar", "standalone"])
def test_configmap_tier_table_passes_the_proxys_own_validation(name: str) -> None:
    settings = tier_table(variant(name)["ConfigMap"])
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 8000
    assert [p.name for p in settings.providers if p.enabled] == ["openai", "groq", "openrouter"]


@pytest.mark.parametrize("name", ["sidecar", "standalone"])
def test_configmap_without_a_proxy_key_is_refused(name: str) -> None:
    # The Secret as committed (empty values): the proxy must not start open to the pod network.
    empty = dict.fromkeys(ENVIRON, "")
    with pytest.raises(ConfigError) as caught:
        tier_table(variant(name)["ConfigMap"], empty)
    assert any(error.startswith("server.api_keys") for error in caught.value.errors)
