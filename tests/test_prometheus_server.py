"""A real Prometheus server scrapes /metrics; what it stores equals what we expose."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

try:
    from tests import observability_helpers as obs
except ImportError:
    import observability_helpers as obs

from itsproxy.proxy.telemetry import metrics

PROMETHEUS = "/usr/bin/prometheus"
DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboard.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prometheus(tmp_path):
    """Yields a function starting Prometheus against a target; always kills it afterwards."""
    binary = obs.require_binary(PROMETHEUS, "prometheus")
    procs: list[subprocess.Popen] = []
    logs = []

    def start(target_port: int) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML; no templating pitfalls
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "itsproxy", "scrape_interval": "1s",
                                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }))
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        logs.append(log)
        procs.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{port}"
        obs.wait_until(lambda: _ready(base, procs[-1], tmp_path), "Prometheus to be ready", interval=0.2)
        return base

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)
    for log in logs:
        log.close()


def _ready(base: str, proc: subprocess.Popen, tmp_path: Path) -> bool:
    if proc.poll() is not None:
        pytest.fail(f"prometheus exited with {proc.returncode}: {(tmp_path / 'prometheus.log').read_text()[-2000:]}")
    try:
        return httpx.get(f"{base}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def query(base: str, promql: str) -> dict:
    r = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (promql, body)
    return body["data"]


def scalar(base: str, promql: str) -> float | None:
    result = query(base, promql)["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_stores_what_we_expose(prometheus):
    route = obs.unique_route("prom")
    reports = [obs.make_report(route, seed=i) for i in range(4)]
    for r in reports:
        metrics.observe(r)
    with obs.LoopbackServer(obs.build_app()) as server:
        exposed = obs.parse_metrics(httpx.get(server.url("/metrics"), timeout=10).text)
        expected_all = obs.metric_sum(exposed, "its_tokens_total")
        expected_route = sum(c.total_tokens for r in reports for c in r.calls)
        assert obs.metric_sum(exposed, "its_tokens_total", route=route) == expected_route

        base = prometheus(server.port)
        obs.wait_until(lambda: scalar(base, 'up{job="itsproxy"}') == 1, "a successful scrape", interval=0.25)
        assert scalar(base, "sum(its_tokens_total)") == expected_all
        assert scalar(base, f'sum(its_tokens_total{{route="{route}"}})') == expected_route
        assert scalar(base, f'sum(its_requests_total{{route="{route}"}})') == len(reports)

        # Every Grafana expression parses and runs against the real server.
        dashboard = json.loads(DASHBOARD.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$route", ".*").replace("$__range", "5m")
                query(base, expr)
