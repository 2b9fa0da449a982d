"""Per-request spend caps: stop drawing, decide with what is there, and say so."""

from __future__ import annotations

import pytest

from conftest import sim_models
from itsproxy.proxy.config import parse_config
from itsproxy.proxy.config_fields import ConfigError

VOTE = {"vote": {"extract": "number"}}
HARD_Q = [{"role": "user", "content": "What is 12 + 30?"}]  # the simulator's vote on it stays split


def adaptive_route(**limits):
    return {"name": "capped", "match": {"model": "capped"},
            "generate": {"model": "sim", "n": 40, "temperature": 0.8,
                         "adaptive": {"rule": "beta", "batch": 2, "confidence": 0.99}},
            "select": [VOTE], "limits": limits}


def test_max_extra_tokens_stops_drawing(make_proxy, fresh_sim):
    free = make_proxy({"routes": [adaptive_route()]}, fresh_sim)
    uncapped = free.client.chat.completions.create(model="capped", messages=HARD_Q, seed=3)
    cap = 150
    p = make_proxy({"routes": [adaptive_route(max_extra_tokens=cap)]}, fresh_sim)
    r = p.client.chat.completions.create(model="capped", messages=HARD_Q, seed=3)
    stop = r.model_extra["its"]["stop"]
    assert stop["reason"] == "max_extra_tokens"
    assert stop["drawn"] < uncapped.model_extra["its"]["stop"]["drawn"]
    extra = r.model_extra["its"]["usage"]["extra"]["total_tokens"]
    per_batch = 2 * max(e["tokens"]["prompt"] + e["tokens"]["completion"] for e in r.model_extra["its"]["evidence"])
    assert cap <= extra < cap + per_batch  # stops within one batch of the cap
    assert r.choices[0].message.content  # still a decided answer


def test_max_cost_stops_drawing(make_proxy, fresh_sim):
    models = sim_models(fresh_sim.url)
    models[0]["litellm_params"].update(input_cost_per_token=1e-6, output_cost_per_token=1e-6)
    p = make_proxy({"model_list": models, "routes": [adaptive_route(max_cost_usd=0.0002)]}, fresh_sim)
    r = p.client.chat.completions.create(model="capped", messages=HARD_Q, seed=3)
    assert r.model_extra["its"]["stop"]["reason"] == "max_cost_usd"
    assert r.model_extra["its"]["usage"]["cost_usd"] >= 0.0002


def test_caps_stop_repair_rounds(make_proxy, fresh_sim):
    route = {"name": "fix", "match": {"model": "fix"}, "generate": {"model": "sim", "n": 2},
             "select": [{"check": {"regex": "^never$"}}, VOTE], "repair": {"rounds": 5},
             "on_unverified": "best_effort", "limits": {"max_extra_tokens": 1}}
    p = make_proxy({"routes": [route]}, fresh_sim)
    r = p.client.chat.completions.create(model="fix", messages=HARD_Q, seed=1)
    its = r.model_extra["its"]
    assert its["stop"]["reason"] == "max_extra_tokens" and its["rounds"] == []
    assert its["verified"] is False


def test_caps_without_a_way_to_stop_are_a_config_error(sim):
    route = {"name": "r", "match": {"model": "r"}, "generate": {"model": "sim", "n": 4}, "select": [VOTE],
             "limits": {"max_extra_tokens": 10}}
    with pytest.raises(ConfigError) as exc:
        parse_config({"model_list": sim_models(sim.url), "routes": [route]})
    assert str(exc.value).startswith("routes[0].limits:")
