"""/metrics and /v1/its/stats over real loopback HTTP, fed through metrics.observe()."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections import Counter as Tally
from pathlib import Path

import httpx
import pytest

try:
    from tests import observability_helpers as obs
except ImportError:  # pytest's default rootdir-less import mode puts tests/ itself on sys.path
    import observability_helpers as obs

from itsproxy.proxy.telemetry import metrics
from itsproxy.proxy.telemetry.stats import histogram_quantile, stats_snapshot

REPO = Path(__file__).resolve().parents[1]

METRIC_NAMES = [
    "its_requests_total", "its_request_duration_seconds", "its_upstream_calls_total",
    "its_tokens_total", "its_extra_tokens_total", "its_selected_tokens_total",
    "its_cost_usd_total", "its_cost_unknown_calls_total", "its_candidates",
    "its_selection_agreement", "its_verified_total", "its_judge_checker_disagreements_total",
    "its_inflight_requests", "its_candidates_saved_total", "its_tokens_saved_estimate_total",
]


@pytest.fixture(scope="module")
def server():
    with obs.LoopbackServer(obs.build_app()) as srv:
        yield srv


def scrape(server, accept: str | None = None) -> str:
    headers = {"Accept": accept} if accept else {}
    r = httpx.get(server.url("/metrics"), headers=headers, timeout=10)
    assert r.status_code == 200
    return r.text


def test_every_metric_is_exposed_after_one_request(server):
    route = obs.unique_route()
    metrics.observe(obs.make_report(route))
    text = scrape(server)
    names = obs.metric_names(text)
    missing = [n for n in METRIC_NAMES if n not in names]
    assert not missing, f"not in /metrics: {missing}"
    labelled = {n for n, labels, _ in obs.parse_metrics(text) if labels.get("route") == route}
    for name in METRIC_NAMES:
        if name != "its_inflight_requests":
            assert any(s == name or s.startswith(name + "_") for s in labelled), name
    kinds = {lab["kind"] for n, lab, _ in obs.parse_metrics(text) if n == "its_tokens_total"}
    assert kinds == {"prompt", "completion"}


def test_openmetrics_when_asked(server):
    metrics.observe(obs.make_report(obs.unique_route()))
    r = httpx.get(server.url("/metrics"), headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


def test_token_counters_equal_the_reports_exactly(server):
    route = obs.unique_route()
    reports = [obs.make_report(route, seed=i) for i in range(7)]
    for r in reports:
        metrics.observe(r)
    samples = obs.parse_metrics(scrape(server))

    want: Tally = Tally()
    calls: Tally = Tally()
    for r in reports:
        for c in r.calls:
            want[(c.model, c.phase, "prompt")] += c.prompt_tokens
            want[(c.model, c.phase, "completion")] += c.completion_tokens
            calls[c.outcome] += 1
    for (model, phase, kind), n in want.items():
        got = obs.metric_sum(samples, "its_tokens_total", route=route, model=model, phase=phase, kind=kind)
        assert got == n, (model, phase, kind)
    assert obs.metric_sum(samples, "its_tokens_total", route=route) == sum(want.values())
    assert obs.metric_sum(samples, "its_selected_tokens_total", route=route) == sum(r.selected.total_tokens for r in reports)
    assert obs.metric_sum(samples, "its_extra_tokens_total", route=route) == sum(r.extra_tokens for r in reports)
    for outcome, n in calls.items():
        assert obs.metric_sum(samples, "its_upstream_calls_total", route=route, outcome=outcome) == n
    known = sum(c.cost_usd for r in reports for c in r.calls if c.cost_usd is not None)
    assert math.isclose(obs.metric_sum(samples, "its_cost_usd_total", route=route), known, rel_tol=1e-9)
    assert obs.metric_sum(samples, "its_cost_unknown_calls_total", route=route) == len(reports)  # one judge each


def test_stats_json_agrees_with_metrics(server):
    route = obs.unique_route()
    reports = [obs.make_report(route, seed=i, duration_s=0.05 * (i + 1)) for i in range(5)]
    reports.append(obs.make_report(route, seed=9, status=502, agreement=None, verified=False))
    for r in reports:
        metrics.observe(r)
    samples = obs.parse_metrics(scrape(server))
    stats = httpx.get(server.url("/v1/its/stats"), timeout=10).json()
    s = stats["routes"][route]
    m = lambda name, **kw: obs.metric_sum(samples, name, route=route, **kw)  # noqa: E731

    assert s["requests"] == m("its_requests_total") == 6
    assert s["by_status"] == {"200": 5, "502": 1} and s["errors"] == 1
    assert s["tokens"]["prompt"] == m("its_tokens_total", kind="prompt")
    assert s["tokens"]["completion"] == m("its_tokens_total", kind="completion")
    assert s["tokens"]["total"] == s["tokens"]["prompt"] + s["tokens"]["completion"]
    assert s["tokens"]["selected"] == m("its_selected_tokens_total")
    assert s["tokens"]["extra"] == m("its_extra_tokens_total")
    assert s["extra_ratio"] == pytest.approx(s["tokens"]["extra"] / s["tokens"]["total"])
    assert s["cost_usd"] == pytest.approx(m("its_cost_usd_total"))
    assert s["cost_unknown_calls"] == m("its_cost_unknown_calls_total")
    for outcome in ("ok", "error", "cancelled"):
        assert s["upstream_calls"][outcome] == m("its_upstream_calls_total", outcome=outcome)
    assert s["latency_s"]["count"] == m("its_request_duration_seconds_count") == 6
    assert s["latency_s"]["sum"] == pytest.approx(m("its_request_duration_seconds_sum"))
    assert s["candidates"] == {"count": 6, "sum": 18, "mean": 3.0}
    agreement = s["agreement"]
    assert agreement["count"] == m("its_selection_agreement_count") == 5
    assert sum(agreement["counts"]) == 5 and agreement["counts"][agreement["le"].index(0.8)] == 5
    assert agreement["mean"] == pytest.approx(0.75)
    assert s["verified"] == {"pass": 5, "fail": 1, "rate": pytest.approx(5 / 6)}
    assert s["judge_checker_disagreements"] == m("its_judge_checker_disagreements_total")
    assert s["saved"] == {"candidates": m("its_candidates_saved_total"),
                          "tokens_estimate": m("its_tokens_saved_estimate_total")}
    assert stats["total"]["requests"] == obs.metric_sum(samples, "its_requests_total")
    assert stats["inflight"] == obs.metric_sum(samples, "its_inflight_requests")
    json.dumps(stats, allow_nan=False)  # the page must get strict JSON


def test_inflight_gauge_follows_the_context(server):
    before = stats_snapshot()["inflight"]
    with metrics.inflight(), metrics.inflight():
        assert stats_snapshot()["inflight"] == before + 2
    assert stats_snapshot()["inflight"] == before


def test_quantiles_from_known_histogram_data(server):
    route = obs.unique_route()
    for d in [0.003] * 2 + [0.3] * 8:  # 2 in (0, 5ms], 8 in (0.25, 0.5]
        metrics.observe(obs.make_report(route, duration_s=d))
    lat = httpx.get(server.url("/v1/its/stats")).json()["routes"][route]["latency_s"]
    # rank 5 of 10 is the 3rd of 8 in (0.25, 0.5]: 0.25 + 0.25 * 3/8
    assert lat["p50"] == pytest.approx(0.34375)
    assert lat["p95"] == pytest.approx(0.25 + 0.25 * 7.5 / 8)
    assert lat["count"] == 10

    slow = obs.unique_route()
    metrics.observe(obs.make_report(slow, duration_s=500))  # beyond the last finite bucket
    assert httpx.get(server.url("/v1/its/stats")).json()["routes"][slow]["latency_s"]["p95"] == 120


def test_histogram_quantile_edges():
    inf = math.inf
    assert histogram_quantile(0.5, [(1.0, 0), (inf, 0)]) is None
    assert histogram_quantile(0.5, [(1.0, 4), (2.0, 4), (inf, 4)]) == pytest.approx(0.5)
    assert histogram_quantile(0.9, [(1.0, 0), (2.0, 10), (inf, 10)]) == pytest.approx(1.9)
    assert histogram_quantile(0.99, [(1.0, 1), (inf, 10)]) == 1.0


def test_observe_never_raises_on_odd_reports(server):
    route = obs.unique_route()
    report = obs.make_report(route)
    report.extra_tokens = -5  # a ledger bug must not fail the request
    metrics.observe(report)
    assert stats_snapshot()["routes"][route]["tokens"]["extra"] == 0


WORKER = textwrap.dedent("""
    import os, sys
    from prometheus_client import values
    from itsproxy.proxy.telemetry import metrics
    from tests.observability_helpers import make_report
    assert values.ValueClass is not values.MutexValue, "not in multi-process mode"
    route, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for seed in range(first, first + count):
        metrics.observe(make_report(route, seed=seed))
    held = metrics.inflight()
    held.__enter__()
    print(os.getpid(), flush=True)
    os._exit(0)  # dies "in flight", like a killed worker: only mark_process_dead clears it
""")


def test_multiprocess_workers_add_up_exactly(tmp_path, monkeypatch):
    route = obs.unique_route("mp")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    plan = [(0, 3), (10, 4)]
    pids = []
    for first, count in plan:
        out = subprocess.run([sys.executable, "-c", WORKER, route, str(first), str(count)], env=env,
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        pids.append(int(out.stdout.strip()))

    reports = [obs.make_report(route, seed=s) for first, count in plan for s in range(first, first + count)]
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    body, _ = metrics.render(None)
    samples = obs.parse_metrics(body.decode())
    spent = sum(c.total_tokens for r in reports for c in r.calls)
    assert obs.metric_sum(samples, "its_tokens_total", route=route) == spent
    assert obs.metric_sum(samples, "its_requests_total", route=route, status="200") == len(reports)
    assert obs.metric_sum(samples, "its_request_duration_seconds_count", route=route) == len(reports)
    assert obs.metric_sum(samples, "its_candidates_bucket", route=route, le="+Inf") == len(reports)
    assert obs.metric_sum(samples, "its_inflight_requests") == 2
    stats = stats_snapshot()
    assert stats["routes"][route]["tokens"]["total"] == spent
    assert stats["routes"][route]["requests"] == len(reports)

    metrics.mark_process_dead(pids[0])
    body, _ = metrics.render(None)
    assert obs.metric_sum(obs.parse_metrics(body.decode()), "its_inflight_requests") == 1
