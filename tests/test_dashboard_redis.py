"""Dashboard history and per-key spend on a real `redis-server`: proxies that write the same
buckets (one after the other, and side by side) show each other's requests, a restarted proxy
shows what came before it, and a Redis that goes away costs history, never a request."""

from __future__ import annotations

import shutil
import time
import uuid

import pytest

from itsproxy.proxy.metering.budgets import key_id
from tests.conftest import sim_models
from tests.test_redis_state import KEY, MSG, RedisServer, redis_server  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (Debian package redis-server)")


def _config(sim_url: str, url: str, prefix: str) -> dict:
    models = sim_models(sim_url)
    for m in models:
        m["litellm_params"].update(input_cost_per_token=1e-6, output_cost_per_token=2e-6)
    return {"model_list": models,
            "routes": [{"name": "vote", "match": {"model": "vote"}, "select": [{"vote": {"extract": "number"}}],
                        "generate": {"model": "sim", "n": 3, "temperature": 0.8}},
                       {"name": "p", "match": {"model": "*"}, "generate": {"model": "sim"}, "passthrough": True}],
            "server": {"api_keys": [KEY], "state": {"backend": "redis", "url": url, "key_prefix": prefix}},
            "budgets": {"tokens_per_day": 1_000_000, "state_timeout_s": 5.0, "on_state_error": "open"}}


def _history(p) -> dict:
    r = p.http.get("/v1/its/history", params={"range": "15m"}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return r.json()


def _wait_for(p, requests: int) -> dict:
    """History writes leave the request path; wait (bounded) until they have landed."""
    deadline = time.monotonic() + 20
    while True:
        body = _history(p)
        if body["total"]["totals"]["requests"] >= requests or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_history_survives_a_restart_and_is_shared(make_proxy, sim, redis_server) -> None:  # noqa: F811
    cfg = _config(sim.url, redis_server.url, f"h{uuid.uuid4().hex[:6]}:")
    first = make_proxy(cfg, sim, api_key=KEY)
    for seed in range(3):
        first.client.chat.completions.create(model="vote", messages=MSG, seed=seed)
    first.stop()  # its memory is gone; Redis keeps the buckets
    second = make_proxy(cfg, sim, api_key=KEY)
    body = _wait_for(second, 3)
    assert body["source"] == "redis"
    assert body["routes"]["vote"]["totals"]["requests"] == 3
    assert body["routes"]["vote"]["totals"]["extra_usd"] > 0
    assert body["routes"]["vote"]["totals"]["latency_p50"] is not None
    third = make_proxy(cfg, sim, api_key=KEY)  # a replica side by side with the second
    third.client.chat.completions.create(model="plain", messages=MSG)
    body = _wait_for(second, 4)
    assert body["routes"]["p"]["totals"]["requests"] == 1
    # per-key spend from the Redis budget store (its day_usage read), by key id only
    keys = {k["key"]: k for k in body["keys"]}
    assert keys[key_id(KEY)]["spent"]["tokens"] > 0 and KEY not in str(body)
    own = second.http.get("/v1/its/budget", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert own["spent"]["tokens"] == keys[key_id(KEY)]["spent"]["tokens"]
    assert own["remaining"]["tokens"] == 1_000_000 - own["spent"]["tokens"]


def test_redis_down_costs_history_not_requests(make_proxy, sim, tmp_path) -> None:
    server = RedisServer(tmp_path)
    cfg = _config(sim.url, server.url, f"d{uuid.uuid4().hex[:6]}:")
    cfg["budgets"]["state_timeout_s"] = 0.3
    p = make_proxy(cfg, sim, api_key=KEY)
    server.stop()
    r = p.client.chat.completions.create(model="plain", messages=MSG)
    assert r.choices[0].message.content
    body = _history(p)
    assert body["source"].startswith("memory (shared history unavailable")
    assert body["total"]["totals"]["requests"] >= 1  # this replica's own memory still answers
    text = p.http.get("/metrics").text
    assert any(x.startswith('its_state_errors_total{store="history"}') and float(x.rsplit(" ", 1)[1]) >= 1
               for x in text.splitlines())
