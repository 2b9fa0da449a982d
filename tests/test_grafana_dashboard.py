"""deploy/grafana: every metric a panel queries is one the proxy really exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

try:
    from tests import observability_helpers as obs
except ImportError:
    import observability_helpers as obs

from itsproxy.proxy.telemetry import metrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
METRIC = re.compile(r"\b(its_[a-zA-Z0-9_]+)")
SUFFIXES = ("_bucket", "_sum", "_count")


def all_panels(panels):
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # collapsed rows nest their panels


def expressions(dashboard) -> list[str]:
    exprs = [t["expr"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", []) if t.get("expr")]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else query or "")
    return exprs


def referenced_metrics(exprs) -> set[str]:
    names = set()
    for expr in exprs:
        for name in METRIC.findall(expr):
            for suffix in SUFFIXES:
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
                    break
            names.add(name)
    return names


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def test_every_panel_metric_exists_in_metrics_output(dashboard):
    metrics.observe(obs.make_report(obs.unique_route("grafana")))
    with obs.LoopbackServer(obs.build_app()) as server:
        text = httpx.get(server.url("/metrics"), timeout=10).text
    exposed = obs.metric_names(text)
    referenced = referenced_metrics(expressions(dashboard))
    assert len(referenced) >= 10, referenced
    missing = sorted(n for n in referenced if n not in exposed)
    assert not missing, f"Grafana queries metrics that /metrics does not expose: {missing}"


def test_panels_are_well_formed(dashboard):
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        assert p["title"].strip()
        assert p.get("targets"), f"panel without query: {p['title']}"
    exprs = " ".join(expressions(dashboard))
    assert "rate(" in exprs and "[1m]" in exprs and "histogram_quantile(" in exprs


def test_datasource_uid_matches_provisioning(dashboard):
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uids = {ds["uid"] for ds in provisioned["datasources"]}
    used = {p["datasource"]["uid"] for p in all_panels(dashboard["panels"]) if "datasource" in p}
    assert used and used <= uids
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/itsproxy.yml").read_text())
    assert providers["providers"][0]["options"]["path"]


def test_prometheus_and_compose_config():
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "itsproxy")
    assert job["static_configs"][0]["targets"] == ["proxy-a:4100", "proxy-b:4100"]  # tests/test_compose.py
    assert job.get("scrape_interval", prom["global"]["scrape_interval"]) == "5s"
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert set(compose["services"]) >= {"proxy-a", "proxy-b", "prometheus", "grafana"}
    proxy = compose["services"]["proxy-a"]
    assert "ITS_API_KEY" in proxy["environment"]
    assert any(v.split(":")[1] == "/app/config.yaml" for v in proxy["volumes"])
    assert "4100:4100" in proxy["ports"]
