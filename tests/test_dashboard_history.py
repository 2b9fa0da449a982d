"""The dashboard's history (`GET /v1/its/history`) and a key's own budget (`GET /v1/its/budget`),
through real requests with the openai SDK against the simulator: points per range, errors by
status, dollars beyond one plain call (vote) and saved by adaptive stopping, time to first token
on streams, today's spend per key (never the key itself)."""

from __future__ import annotations

import time
import uuid

import httpx
import openai
import pytest

from itsproxy.proxy.metering.budgets import key_id
from tests.conftest import sim_models

PRICES = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
KEY, OTHER = "sk-dash-one", "sk-dash-two"
MSG = [{"role": "user", "content": "What is 17 + 25?"}]


def priced_models(sim_url: str) -> list[dict]:
    models = sim_models(sim_url, **{"sim-easy": "sim@easy_share=1"})
    for m in models:
        m["litellm_params"].update(PRICES)
    return models


def routes(tag: str) -> list[dict]:
    return [
        {"name": f"vote-{tag}", "match": {"model": "vote"}, "select": [{"vote": {"extract": "number"}}],
         "generate": {"model": "sim", "n": 5, "temperature": 0.8}},
        {"name": f"adaptive-{tag}", "match": {"model": "adaptive"}, "select": [{"vote": {"extract": "number"}}],
         "generate": {"model": "sim-easy", "n": 16, "temperature": 0.8,
                      "adaptive": {"rule": "beta", "confidence": 0.95, "min": 2, "batch": 1, "mode": "batch"}},
         "limits": {"max_n": 16, "timeout_s": 20}},
        {"name": f"broken-{tag}", "match": {"model": "broken"}, "generate": {"model": "sim-broken"},
         "passthrough": True},
        {"name": f"pass-{tag}", "match": {"model": "*"}, "generate": {"model": "sim"}, "passthrough": True},
    ]


@pytest.fixture(scope="module")
def served(module_servers, sim, tmp_path_factory):
    from tests.conftest import proxy_starter
    tag = uuid.uuid4().hex[:6]
    config = {"model_list": priced_models(sim.url), "routes": routes(tag),
              "server": {"api_keys": [KEY, OTHER], "state_dir": str(tmp_path_factory.mktemp("state"))}, "budgets": {"tokens_per_day": 1_000_000}}
    p = proxy_starter(module_servers)(config, sim, api_key=KEY)
    for i in range(3):
        p.client.chat.completions.create(model="vote", messages=MSG, seed=i)
        p.client.chat.completions.create(model="adaptive", messages=MSG, seed=10 + i)
    for model in ("vote", "plain"):
        stream = p.client.chat.completions.create(model=model, messages=MSG, seed=7, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    with pytest.raises(openai.APIStatusError) as err:
        p.client.chat.completions.create(model="broken", messages=MSG)
    assert err.value.status_code >= 500
    return p, tag, err.value.status_code


def history(p, key: str = KEY, **params) -> httpx.Response:
    return p.http.get("/v1/its/history", params=params, headers={"Authorization": f"Bearer {key}"})


@pytest.mark.parametrize("params", [{"range": "2h"}, {"range": ""}, {"since": "yesterday"}, {"since": "nan"},
                                    {"since": str(time.time() - 3 * 86400)}, {"since": str(time.time() + 3600)},
                                    {"range": "1h", "since": str(time.time() - 60)}])
def test_invalid_ranges_are_400(served, params):
    r = history(served[0], **params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] in ("range", "since")


@pytest.mark.parametrize("name,step", [("15m", 10), ("1h", 10), ("6h", 60), ("24h", 60)])
def test_ranges_give_timestamped_points(served, name, step):
    body = history(served[0], range=name).json()
    assert body["step_s"] == step and body["source"] == "memory"
    t = body["t"]
    assert all(b - a == step for a, b in zip(t, t[1:], strict=False))
    assert t[-1] <= body["until"] < t[-1] + step
    assert len(body["total"]["points"]["requests"]) == len(t)
    assert body["total"]["totals"]["requests"] >= 9


def test_history_counts_real_traffic(served):
    p, tag, broken_status = served
    body = history(p, since=str(time.time() - 600)).json()
    routes_ = body["routes"]
    vote, adaptive = routes_[f"vote-{tag}"]["totals"], routes_[f"adaptive-{tag}"]["totals"]
    assert vote["requests"] == 4 and adaptive["requests"] == 3
    assert routes_[f"broken-{tag}"]["totals"]["by_status"] == {str(broken_status): 1}
    assert body["total"]["totals"]["by_status"][str(broken_status)] >= 1
    assert sum(body["total"]["points"]["by_status"][str(broken_status)]) >= 1
    # five candidates for one answer: four were extra, in tokens and in dollars
    assert vote["extra_usd"] > 0 and vote["extra_tokens"] > 0 and vote["cost_usd"] > vote["extra_usd"]
    assert adaptive["saved_usd"] > 0 and adaptive["saved_tokens"] > 0
    assert vote["latency_p50"] is not None and vote["latency_p95"] >= vote["latency_p50"]
    # streams (vote and passthrough) have a time to first token; non-stream requests do not
    assert vote["ttft_p50"] is not None and routes_[f"pass-{tag}"]["totals"]["ttft_p50"] is not None
    assert adaptive["ttft_p50"] is None
    assert body["models"]["sim"]["totals"]["calls"] >= 5
    assert body["models"]["sim"]["totals"]["cost_usd"] > 0


def test_time_to_first_token_is_a_prometheus_histogram(served):
    p, tag, _ = served
    text = p.http.get("/metrics").text
    line = next(x for x in text.splitlines()
                if x.startswith("its_time_to_first_token_seconds_count") and f"vote-{tag}" in x)
    assert float(line.rsplit(" ", 1)[1]) == 1
    assert "its_extra_cost_usd_total" in text and "its_cost_saved_estimate_usd_total" in text


def test_keys_table_shows_spend_never_the_key(served):
    p, _, _ = served
    r = history(p)
    keys = {k["key"]: k for k in r.json()["keys"]}
    assert set(keys) == {key_id(KEY), key_id(OTHER)}
    assert keys[key_id(KEY)]["spent"]["tokens"] > 0 and keys[key_id(OTHER)]["spent"]["tokens"] == 0
    assert keys[key_id(KEY)]["limit"]["tokens"] == 1_000_000
    assert KEY not in r.text and OTHER not in r.text


def test_budget_endpoint_for_ones_own_key(served):
    p, _, _ = served
    assert p.http.get("/v1/its/budget").status_code == 401
    assert p.http.get("/v1/its/budget", headers={"Authorization": "Bearer nope"}).status_code == 401
    before = p.http.get("/v1/its/budget", headers={"Authorization": f"Bearer {OTHER}"}).json()
    assert before["key"] == key_id(OTHER) and before["unlimited"] is False
    assert before["remaining"]["tokens"] == 1_000_000 and before["resets_at"].endswith("T00:00:00Z")
    client = openai.OpenAI(base_url=p.handle.base_url, api_key=OTHER, max_retries=0)
    client.chat.completions.create(model="plain", messages=MSG)
    after = p.http.get("/v1/its/budget", headers={"Authorization": f"Bearer {OTHER}"}).json()
    assert 0 < after["spent"]["tokens"] == 1_000_000 - after["remaining"]["tokens"]
    assert after["spent"]["cost_usd"] > 0 and after["reserved"]["tokens"] == 0


def test_budget_endpoint_without_budgets_says_unlimited(make_proxy, sim):
    p = make_proxy({"model_list": priced_models(sim.url), "routes": routes("nb"), "server": {"api_keys": [KEY]}},
                   sim, api_key=KEY)
    body = p.http.get("/v1/its/budget", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert body["unlimited"] is True and body["remaining"] is None and body["key"] == key_id(KEY)


def test_key_in_the_page_url_opens_the_page_only(served):
    p, _, _ = served
    assert p.http.get("/dashboard", params={"key": KEY}).status_code == 200
    assert p.http.get("/dashboard", params={"key": "nope"}).status_code == 401
    assert p.http.get("/v1/its/history", params={"key": KEY}).status_code == 401  # data wants the header
    assert p.http.get("/dashboard/static/dashboard.js").status_code == 200  # public code, no data


def test_buckets_are_bounded_and_tiers_chosen_by_range():
    from itsproxy.proxy.telemetry.history import TIERS, History
    from tests.observability_helpers import make_report
    now = [1_700_000_000.0]
    h = History(clock=lambda: now[0])
    for _ in range(3 * 24 * 60):  # three days, one request a minute
        h.record(make_report("bounded"))
        now[0] += 60
    for tier in TIERS:
        kept = h._tiers[tier.step_s]
        assert len(kept) <= tier.keep_s // tier.step_s + 2
        assert min(kept) >= (now[0] - 60) - tier.keep_s - 2 * tier.step_s  # as of the last record
    import asyncio
    day = asyncio.run(h.query(now[0] - 86400))
    assert day["step_s"] == 60 and day["total"]["totals"]["requests"] >= 24 * 60 - 1
    hour = asyncio.run(h.query(now[0] - 900))
    assert hour["step_s"] == 10 and hour["total"]["totals"]["requests"] == 15


def test_coarse_tier_holds_exactly_what_the_fine_tier_recorded():
    """Requests go into the 10 s tier; the 1 min tier gets whole closed buckets, plus the open one
    when read: a day's range and an hour's count the same requests, the latest included."""
    import asyncio

    from itsproxy.proxy.telemetry.history import History
    from tests.observability_helpers import make_report
    now = [1_700_000_000.0]
    h = History(clock=lambda: now[0])
    for gap in (0, 3, 9, 17, 44, 61, 62, 130, 131):  # inside buckets, across them, across minutes
        now[0] = 1_700_000_000.0 + gap
        h.record(make_report("folded"))
    hour, day = asyncio.run(h.query(now[0] - 3000)), asyncio.run(h.query(now[0] - 80000))
    assert (hour["step_s"], day["step_s"]) == (10, 60)
    assert hour["total"]["totals"]["requests"] == day["total"]["totals"]["requests"] == 9
    assert sum(x for x in day["total"]["points"]["requests"] if x) == 9  # per point, not only in the sum
