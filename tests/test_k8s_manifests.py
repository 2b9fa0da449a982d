"""deploy/k8s/ checked offline: every document against the Kubernetes OpenAPI schemas bundled in
the `kubernetes-validate` package (strict: an unknown field is an error, so a typo cannot slip
by), and against the rest of the project: the ConfigMap's config.yaml loads, every key it reads
from the environment comes from a Secret, the pod runs as the image's user on a read-only root
with the image's state volume, probes hit /health, selectors and names line up."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from itsproxy.proxy.config import parse_config

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (test extra)")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]  # oldest supported-ish and newest bundled


def documents() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def kind(name: str, kind_: str) -> dict[str, Any]:
    (doc,) = [d for d in documents() if d["kind"] == kind_ and d["metadata"]["name"] == name]
    return doc


def proxy_pod() -> dict[str, Any]:
    return kind("itsproxy", "Deployment")["spec"]["template"]


def container() -> dict[str, Any]:
    (c,) = proxy_pod()["spec"]["containers"]
    return c


@pytest.mark.parametrize("version", VERSIONS)
def test_every_document_validates_against_the_bundled_schemas(version: str) -> None:
    docs = documents()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget",
                                         "HorizontalPodAutoscaler"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("break_it", [
    lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={}),  # a typo
    lambda d: d["spec"].update(replicas="two"),  # a wrong type
    lambda d: d["spec"].pop("selector"),  # a required field
])
def test_the_validator_catches_a_broken_manifest(break_it) -> None:
    broken = copy.deepcopy(kind("itsproxy", "Deployment"))
    break_it(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def _config_text() -> str:
    return kind("itsproxy-config", "ConfigMap")["data"]["config.yaml"]


def test_the_configmap_config_loads_with_keys_from_the_secret(monkeypatch) -> None:
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container()["env"] if "valueFrom" in e}
    needed = set(re.findall(r"os\.environ/([A-Z0-9_]+)", _config_text()))
    assert needed and needed <= set(env), f"config reads {needed}, the pod sets {set(env)}"
    assert all(ref["name"] == "itsproxy-keys" for ref in env.values())
    for name in needed:
        monkeypatch.setenv(name, f"sk-test-{name.lower()}")
    config = parse_config(yaml.safe_load(_config_text()))
    assert config.server.state.backend == "redis" and config.budgets is not None
    host = re.match(r"redis://([^:/]+)", config.server.state.url or "")
    assert host and kind(host.group(1), "Service"), "the Redis URL names the Redis Service"
    mounts = {m["mountPath"]: m for m in container()["volumeMounts"]}
    assert config.server.state_dir in mounts and not mounts[config.server.state_dir].get("readOnly")
    args = container()["args"]
    config_path = Path(args[args.index("--config") + 1])
    assert str(config_path.parent) in mounts and mounts[str(config_path.parent)]["readOnly"]
    longest = max(r.limits.timeout_s for r in config.routes)
    assert proxy_pod()["spec"]["terminationGracePeriodSeconds"] > longest, "SIGTERM drains the longest route"


def test_the_pod_runs_like_the_image() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile).group(1))
    pod, c = proxy_pod()["spec"], container()
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    volume = re.search(r'VOLUME \["([^"]+)"\]', dockerfile).group(1)
    assert volume in {m["mountPath"] for m in c["volumeMounts"]}
    port = int(re.search(r"EXPOSE (\d+)", dockerfile).group(1))
    assert c["ports"][0]["containerPort"] == port and "--port" in c["args"] and str(port) in c["args"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    annotations = proxy_pod()["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)


def test_names_and_selectors_line_up() -> None:
    labels = proxy_pod()["metadata"]["labels"]
    deployment = kind("itsproxy", "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert kind("itsproxy", "Service")["spec"]["selector"].items() <= labels.items()
    assert kind("itsproxy", "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = kind("itsproxy", "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "itsproxy")
    assert kind("itsproxy-config", "ConfigMap")["metadata"]["name"] in {
        v["configMap"]["name"] for v in proxy_pod()["spec"]["volumes"] if "configMap" in v}
    redis_pod = kind("itsproxy-redis", "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert kind("itsproxy-redis", "Service")["spec"]["selector"].items() <= redis_pod.items()
