"""Operators see failures: one JSON access line per settled request (no secrets, no prompt text),
a warning per failing upstream call, and refusals before routing (401/404/405) in /metrics."""

from __future__ import annotations

import hashlib
import json
import logging

import httpx
import openai
import pytest

from conftest import KEY, PASS_ROUTE, VOTE_ROUTE, sim_models
from observability_helpers import metric_sum, parse_metrics

CLIENT_KEY = "sk-client-key-7d1e"
QUESTION = "What is 6 times 7? secret-prompt-text"


def access_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "itsproxy.access"]


@pytest.fixture
def logged(make_proxy, sim):
    config = {"model_list": sim_models(sim.url, **{"sim-fail": "sim@fail_rate=1@fail_status=503"}),
              "server": {"api_keys": [CLIENT_KEY]},
              "routes": [VOTE_ROUTE, {"name": "broken", "match": {"model": "broken"},
                                      "generate": {"model": "sim-fail"}, "passthrough": True}, PASS_ROUTE]}
    return make_proxy(config, sim, api_key=CLIENT_KEY)


def test_one_json_line_per_request_without_secrets_or_prompt(logged, caplog):
    caplog.set_level(logging.INFO, logger="itsproxy.access")
    r = logged.client.chat.completions.create(model="math", messages=[{"role": "user", "content": QUESTION}])
    with pytest.raises(openai.BadRequestError):
        logged.client.chat.completions.create(model="math", messages=[], temperature=1)
    ok, bad = access_lines(caplog)
    assert ok["id"] == r.id and ok["route"] == "vote" and ok["status"] == 200
    assert ok["candidates"] == 9 and ok["prompt_tokens"] > 0 and ok["completion_tokens"] > 0
    assert ok["latency_ms"] > 0 and ok["upstream_calls"] >= 1 and ok["upstream_errors"] == 0
    assert ok["key_id"] == hashlib.sha256(CLIENT_KEY.encode()).hexdigest()[:16]
    assert bad["status"] == 400 and bad["route"] == "(unrouted)" and bad["id"].startswith("req-")
    text = caplog.text
    assert CLIENT_KEY not in text and KEY not in text and "secret-prompt-text" not in text


def test_access_log_can_be_switched_off(make_proxy, sim, caplog):
    caplog.set_level(logging.INFO, logger="itsproxy.access")
    quiet = make_proxy({"server": {"access_log": False}, "routes": [PASS_ROUTE]}, sim)
    quiet.client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "hi"}])
    assert access_lines(caplog) == []


def test_a_failing_upstream_call_is_a_warning_with_status_and_model(logged, caplog):
    caplog.set_level(logging.INFO)
    with pytest.raises(openai.APIStatusError):
        logged.client.chat.completions.create(model="broken", messages=[{"role": "user", "content": QUESTION}])
    warnings = [r.getMessage() for r in caplog.records if r.name == "itsproxy.upstream"]
    assert warnings and all(r.levelno == logging.WARNING for r in caplog.records if r.name == "itsproxy.upstream")
    assert "model=sim-fail" in warnings[0] and "status=503" in warnings[0]
    [line] = access_lines(caplog)
    assert line["route"] == "broken" and line["status"] >= 500 and line["upstream_errors"] >= 1
    assert KEY not in caplog.text and CLIENT_KEY not in caplog.text


def unrouted(proxy, status: int) -> float:
    samples = parse_metrics(proxy.http.get("/metrics").text)
    return metric_sum(samples, "its_requests_total", route="(unrouted)", status=str(status))


def test_refusals_before_routing_are_counted_once(logged):
    before = {s: unrouted(logged, s) for s in (400, 401, 404, 405)}
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    assert httpx.post(f"{logged.url}/v1/chat/completions", json={}).status_code == 401
    assert logged.http.get("/nowhere").status_code == 404
    assert logged.http.get("/v1/chat/completions", headers=auth).status_code == 405
    assert logged.http.post("/v1/chat/completions", json={"model": 7}, headers=auth).status_code == 400
    after = {s: unrouted(logged, s) for s in (400, 401, 404, 405)}
    assert after[401] - before[401] == 1
    assert after[405] - before[405] == 1
    assert after[400] - before[400] == 1  # settled by the request path, not counted twice
    assert after[404] - before[404] == 1
