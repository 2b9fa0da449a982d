"""Adaptive stopping on scorer routes: stop once a candidate scores high enough."""

from __future__ import annotations

import pytest

from conftest import sim_models
from itsproxy.proxy.config import parse_config
from itsproxy.proxy.config_fields import ConfigError


def route(select, **adaptive):
    return {"name": "s", "match": {"model": "s"},
            "generate": {"model": "sim", "n": 16, "temperature": 0.8,
                         "adaptive": {"batch": 2, "min": 2, "confidence": 0.9, **adaptive}},
            "select": select}


def test_reward_route_stops_at_a_confident_score(make_proxy, fresh_sim):
    select = [{"reward": {"url": f"{fresh_sim.url}/classify", "api": "vllm_classify"}}]
    p = make_proxy({"routes": [route(select)]}, fresh_sim)
    stopped = 0
    for i in range(6):
        r = p.client.chat.completions.create(model="s", messages=[{"role": "user", "content": f"What is {i} + 9?"}],
                                             seed=i)
        its = r.model_extra["its"]
        stop = its["stop"]
        assert its["candidates"] == stop["drawn"]
        scores = [e["scores"]["reward"] for e in its["evidence"] if "reward" in e.get("scores", {})]
        assert len(scores) == its["candidates"]  # each candidate scored once, as it arrived
        if stop["reason"] == "score":
            stopped += 1
            assert stop["drawn"] < 16 and max(scores) >= 0.9
            assert its["evidence"][its["selected"]]["scores"]["reward"] == max(scores)
    assert stopped >= 4
    assert p.sim_stats()["reward_requests"] > 0


def test_pairwise_judge_cannot_be_adaptive(sim):
    with pytest.raises(ConfigError) as exc:
        parse_config({"model_list": sim_models(sim.url), "routes": [route([{"judge": {"model": "sim", "mode": "pairwise"}}])]})
    assert str(exc.value).startswith("routes[0].generate.adaptive:")
