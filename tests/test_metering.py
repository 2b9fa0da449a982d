"""Metering end to end: responses, /metrics, Prometheus and the upstream agree exactly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import httpx
import yaml

from conftest import sim_models
from itsproxy.proxy.simulator import questions
from tests import observability_helpers as obs
from tests.test_prometheus_server import prometheus, scalar  # noqa: F401 - a fixture

ARITH = {"python": "itsproxy.proxy.demo_checks:check_sum"}


def routes(tag: str) -> list[dict]:
    vote = {"vote": {"extract": "number"}}
    return [
        {"name": f"vote-{tag}", "match": {"model": "vote"}, "generate": {"model": "sim", "n": 5, "temperature": 0.8},
         "select": [vote]},
        {"name": f"judge-{tag}", "match": {"model": "judge"},
         "generate": {"model": "sim", "n": 3, "temperature": 0.8},
         "select": [{"judge": {"model": "sim", "mode": "pointwise"}}]},
        {"name": f"fix-{tag}", "match": {"model": "fix"}, "generate": {"model": "sim", "n": 2, "temperature": 0.8},
         "select": [{"check": ARITH}, vote], "repair": {"rounds": 2}, "on_unverified": "best_effort"},
        {"name": f"fan-{tag}", "match": {"model": "fan"}, "generate": {"model": "sim-no-n", "n": 3},
         "select": [vote]},
        {"name": f"pass-{tag}", "match": {"model": "*"}, "generate": {"model": "sim"}, "passthrough": True},
    ]


def metric_tokens(samples, route: str) -> float:
    return obs.metric_sum(samples, "its_tokens_total", route=route)


def run_mixed(p, seed: int) -> int:
    """Vote, judge, check+repair, fan-out and passthrough, streamed and not; returns the summed usage."""
    total = 0
    for i, (q, _) in enumerate(questions(seed=seed, count=6)):
        msgs = [{"role": "user", "content": q}]
        for model in ("vote", "judge", "fix", "fan", "anything"):
            r = p.client.chat.completions.create(model=model, messages=msgs, seed=i)
            total += r.usage.total_tokens
            chunks = list(p.client.chat.completions.create(model=model, messages=msgs, seed=i + 100, stream=True,
                                                           stream_options={"include_usage": True}))
            total += chunks[-1].usage.total_tokens
    return total


def test_usage_equals_metrics_equals_upstream(make_proxy, fresh_sim):
    tag = uuid.uuid4().hex[:6]
    p = make_proxy({"routes": routes(tag)}, fresh_sim)
    total = run_mixed(p, seed=31)
    served = p.sim_stats()["total_tokens"]
    samples = obs.parse_metrics(p.http.get("/metrics").text)
    metered = sum(metric_tokens(samples, r["name"]) for r in routes(tag))
    assert total == metered == served
    phases = {lab["phase"] for n, lab, v in samples if n == "its_tokens_total" and lab["route"] == f"fix-{tag}"}
    assert {"generate"} <= phases
    stats = p.http.get("/v1/its/stats").json()["routes"]
    assert sum(stats[r["name"]]["tokens"]["total"] for r in routes(tag) if r["name"] in stats) == total


def test_missing_usage_is_estimated_and_flagged(make_proxy, fresh_sim):
    route = {"name": f"est-{uuid.uuid4().hex[:6]}", "match": {"model": "est"},
             "generate": {"model": "sim-no-usage", "n": 4, "temperature": 0.8}, "select": [{"vote": {"extract": "number"}}]}
    p = make_proxy({"routes": [route]}, fresh_sim)
    r = p.client.chat.completions.create(model="est", messages=[{"role": "user", "content": "What is 5 + 8?"}])
    assert r.model_extra["its"]["usage"]["estimated"] is True
    truth = p.sim_stats()["total_tokens"]  # the simulator still counts what it served
    # Our tiktoken count follows OpenAI's formula, as the simulator does: they should agree closely.
    assert abs(r.usage.total_tokens - truth) <= 0.02 * truth


def test_cost_is_priced_and_unknown_is_unknown(make_proxy, fresh_sim):
    models = sim_models(fresh_sim.url)
    models[0]["litellm_params"].update(input_cost_per_token=1e-6, output_cost_per_token=2e-6)
    models.append({"model_name": "gpt-4o-mini", "litellm_params": {
        "model": "openai/gpt-4o-mini", "api_base": f"{fresh_sim.url}/v1", "api_key": "k"}})
    models.append({"model_name": "mystery", "litellm_params": {
        "model": "openai/mystery-model-xyz", "api_base": f"{fresh_sim.url}/v1", "api_key": "k"}})
    p = make_proxy({"model_list": models, "routes": []}, fresh_sim)
    msgs = [{"role": "user", "content": "What is 1 + 2?"}]
    r = p.client.chat.completions.with_raw_response.create(model="sim", messages=msgs)
    u = r.parse().usage
    assert abs(float(r.headers["x-its-cost-usd"]) - (u.prompt_tokens * 1e-6 + u.completion_tokens * 2e-6)) < 1e-12
    r = p.client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=msgs)
    assert float(r.headers["x-its-cost-usd"]) > 0  # litellm's offline cost map knows it
    r = p.client.chat.completions.with_raw_response.create(model="mystery", messages=msgs)
    assert r.headers["x-its-cost-usd"] == "unknown"
    assert r.parse().model_extra["its"]["usage"]["cost_usd"] is None


def test_prometheus_reads_back_real_traffic(make_proxy, fresh_sim, prometheus):  # noqa: F811
    tag = uuid.uuid4().hex[:6]
    p = make_proxy({"routes": routes(tag)}, fresh_sim)
    total = run_mixed(p, seed=7)
    base = prometheus(p.handle.port)
    names = "|".join(r["name"] for r in routes(tag))
    promql = f'sum(its_tokens_total{{route=~"{names}"}})'
    obs.wait_until(lambda: scalar(base, promql) == total, "Prometheus to hold the proxy's token count",
                   interval=0.25)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_several_workers_add_up(sim, tmp_path):
    tag = uuid.uuid4().hex[:6]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model_list": sim_models(sim.url), "routes": routes(tag)}))
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    os.makedirs(env["PROMETHEUS_MULTIPROC_DIR"])
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", str(port),
                             "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        obs.wait_until(lambda: _healthy(url), "the proxy workers to start", timeout=60)
        total = 0
        with httpx.Client(base_url=url, timeout=30) as c:
            for i in range(24):  # new connections spread over both workers
                r = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
                    "model": "vote", "seed": i, "messages": [{"role": "user", "content": f"What is {i} + 1?"}]})
                total += r.json()["usage"]["total_tokens"]
            for _ in range(4):  # whichever worker answers, the figures are the sum of all
                samples = obs.parse_metrics(c.get("/metrics").text)
                assert obs.metric_sum(samples, "its_requests_total", route=f"vote-{tag}") == 24
                assert metric_tokens(samples, f"vote-{tag}") == total
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        time.sleep(0.1)
        return False
