"""Candidate generation through the proxy: augmenting strings, model pools, the concurrency cap."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import sim_models
from itsproxy.proxy.config import parse_config
from itsproxy.proxy.config_fields import ConfigError
from itsproxy.strategies.generate import GenerateSpec, PoolMember, plan_slots

VOTE = {"vote": {"extract": "number"}}
Q = [{"role": "user", "content": "What is 12 + 30?"}]
STRINGS = ["Answer directly.", "Think step by step.", "Double-check."]


def route(generate, **more):
    return {"name": "r", "match": {"model": "r"}, "generate": generate, "select": [VOTE], **more}


def test_slots_spread_models_and_strings_in_proportion():
    spec = GenerateSpec(pool=[PoolMember("a", 4), PoolMember("b", 2)], augment=STRINGS)
    slots = plan_slots(spec, 0, 6)
    assert Counter(m for m, _ in slots) == {0: 4, 1: 2}
    assert Counter(a for m, a in slots if m == 0) == {0: 2, 1: 1, 2: 1}
    assert Counter(a for m, a in slots if m == 1) == {0: 1, 1: 1}
    # two batches of 3 see the same mix as one batch of 6
    assert sorted(plan_slots(spec, 0, 3) + plan_slots(spec, 3, 3)) == sorted(slots)


def test_augment_strings_round_robin_and_recorded(make_proxy, fresh_sim):
    p = make_proxy({"routes": [route({"model": "sim", "n": 6, "temperature": 0.8, "augment": STRINGS})]}, fresh_sim)
    r = p.client.chat.completions.create(model="r", messages=Q, seed=1)
    ev = r.model_extra["its"]["evidence"]
    assert Counter(e["augment"] for e in ev) == {s: 2 for s in STRINGS}
    assert all(e["augment"] == STRINGS[e["augment_index"]] for e in ev)
    assert p.sim_stats()["requests"] == 3  # one native-n call per string


def test_augment_as_suffix_reaches_the_model(make_proxy, fresh_sim):
    # The simulator raises accuracy when "step by step" appears anywhere in the prompt;
    # with a suffix it must be in the user message, so the prompt grows by the string's tokens.
    gen = {"model": "sim", "n": 1, "augment": ["Think step by step."], "augment_as": "suffix"}
    p = make_proxy({"routes": [route(gen)]}, fresh_sim)
    with_suffix = p.client.chat.completions.create(model="r", messages=Q).usage.prompt_tokens
    plain = p.client.chat.completions.create(model="sim", messages=Q).usage.prompt_tokens
    assert with_suffix > plain


def test_model_pool_candidates_vote_together(make_proxy, fresh_sim):
    gen = {"models": [{"model": "sim", "n": 3}, {"model": "sim-no-n", "n": 2, "temperature": 0.3}]}
    p = make_proxy({"routes": [route(gen)]}, fresh_sim)
    r = p.client.chat.completions.create(model="r", messages=Q, seed=2)
    its = r.model_extra["its"]
    assert Counter(e["model"] for e in its["evidence"]) == {"sim": 3, "sim-no-n": 2}
    assert sum(its["votes"].values()) == 5
    assert set(its["usage"]["by_model"]) == {"sim", "sim-no-n"}
    assert r.usage.total_tokens == p.sim_stats()["total_tokens"]


def test_usage_report_selected(make_proxy, fresh_sim):
    p = make_proxy({"routes": [route({"model": "sim", "n": 5}, usage_report="selected")]}, fresh_sim)
    r = p.client.chat.completions.create(model="r", messages=Q, seed=3)
    u = r.model_extra["its"]["usage"]
    assert r.usage.total_tokens == u["selected"]["total_tokens"] < u["total"]["total_tokens"]


def test_concurrency_cap_waits_then_503(make_proxy, fresh_sim):
    server = {"max_upstream_concurrency": 1, "upstream_queue_timeout_s": 0.2}
    p = make_proxy({"routes": [], "server": server}, fresh_sim)
    body = {"model": "sim-slow", "messages": Q}
    with ThreadPoolExecutor(3) as pool:
        codes = list(pool.map(lambda _: httpx.post(f"{p.url}/v1/chat/completions", json=body, timeout=10), range(3)))
    statuses = sorted(r.status_code for r in codes)
    assert statuses[0] == 200 and 503 in statuses
    busy = next(r for r in codes if r.status_code == 503)
    assert busy.json()["error"]["code"] == "proxy_busy" and busy.headers["x-should-retry"] == "true"


def test_route_params_are_forced(make_proxy, fresh_sim):
    schema = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "integer"}}}
    route = {"name": "j", "match": {"model": "j"},
             "generate": {"model": "sim", "n": 3, "params": {"response_format": {"type": "json_object"}}},
             "select": [{"check": {"json_schema": schema}}, {"vote": {"extract": "json"}}]}
    p = make_proxy({"routes": [route]}, fresh_sim)
    r = p.client.chat.completions.create(model="j", messages=Q, seed=1)
    assert r.model_extra["its"]["verified"] is True
    assert isinstance(json.loads(r.choices[0].message.content)["answer"], int)


def test_route_params_are_checked(sim):
    route = {"name": "j", "match": {"model": "j"}, "generate": {"model": "sim", "params": {"api_base": "x"}}}
    with pytest.raises(ConfigError) as exc:
        parse_config({"model_list": sim_models(sim.url), "routes": [route]})
    assert str(exc.value).startswith("routes[0].generate.params.api_base:")
