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


COUNTER_SERIES = re.compile(r"\b(its_[a-zA-Z0-9_]+?(?:_total|_bucket|_sum|_count))\b(\{[^}]*\})?")
WRAPPED = re.compile(r"(?:rate|increase)\(\s*$")


def bare_counters(expr: str) -> list[str]:
    """Counter (and histogram) series read raw: not the argument of rate()/increase() with a [range]."""
    bare = []
    for m in COUNTER_SERIES.finditer(expr):
        wrapped = WRAPPED.search(expr[: m.start()]) and re.match(r"\s*\[[^\]]+\]\s*\)", expr[m.end():])
        if not wrapped:
            bare.append(m.group(0))
    return bare


def test_every_counter_is_read_through_rate_or_increase(dashboard):
    """A raw counter resets to 0 when the proxy restarts (and differs per replica): panels must
    show rates or increases over a window, never the counter itself."""
    exprs = [t["expr"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", []) if t.get("expr")]
    offenders = {e: bare_counters(e) for e in exprs if bare_counters(e)}
    assert not offenders, offenders
    assert bare_counters("sum(its_requests_total)") and bare_counters("rate(its_cost_usd_total[5m]) + its_x_total")
    assert not bare_counters('sum(increase(its_requests_total{route=~"$route"}[$__range]))')


def test_panels_for_the_operator_metrics(dashboard):
    exprs = " ".join(t["expr"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", []))
    for name in ("its_time_to_first_token_seconds_bucket", "its_extra_cost_usd_total",
                 "its_cost_saved_estimate_usd_total", "its_state_errors_total", 'status=~"4..|5.."'):
        assert name in exprs, name
