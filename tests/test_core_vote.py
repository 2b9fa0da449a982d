"""Self-consistency routes: native n and fan-out, client n, exact usage, accuracy."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from conftest import PASS_ROUTE, VOTE_ROUTE
from itsproxy.proxy.simulator import questions


def ask(client, model, q, seed, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}], seed=seed, **kw)


def test_vote_picks_the_majority_and_reports_it(proxy):
    r = ask(proxy.client, "math", "What is 12 + 30?", 11)
    its = r.model_extra["its"]
    assert its["candidates"] == 9 and its["strategy"] == "vote"
    votes = its["votes"]
    top = max(votes.values())
    winner_answer = its["evidence"][its["selected"]]["answer"]
    assert votes[winner_answer] == top
    assert sum(votes.values()) == 9
    assert winner_answer in r.choices[0].message.content


def test_usage_equals_what_the_upstream_served(proxy):
    before = proxy.sim_stats()
    r = ask(proxy.client, "math", "What is 3 + 4?", 5)
    after = proxy.sim_stats()
    served = after["total_tokens"] - before["total_tokens"]
    u = r.model_extra["its"]["usage"]
    assert r.usage.total_tokens == served == u["total"]["total_tokens"]
    assert u["selected"]["total_tokens"] + u["extra"]["total_tokens"] == served
    raw = proxy.client.chat.completions.with_raw_response.create(
        model="math", messages=[{"role": "user", "content": "What is 3 + 4?"}], seed=5)
    assert raw.headers["x-its-extra-tokens"] == str(raw.parse().model_extra["its"]["usage"]["extra"]["total_tokens"])
    assert raw.headers["x-its-candidates"] == "9"


def test_native_n_is_one_call(proxy):
    before = proxy.sim_stats()
    ask(proxy.client, "math", "What is 8 + 9?", 1)
    after = proxy.sim_stats()
    assert after["requests"] - before["requests"] == 1
    assert after["choices"] - before["choices"] == 9


def test_fan_out_when_upstream_refuses_n(make_proxy, fresh_sim):
    route = {**VOTE_ROUTE, "generate": {"model": "sim-no-n", "n": 5, "temperature": 0.8}}
    p = make_proxy({"routes": [route]}, fresh_sim)
    r1 = ask(p.client, "math", "What is 20 + 22?", 2)
    s1 = p.sim_stats()
    assert r1.model_extra["its"]["candidates"] == 5
    assert s1["errors"] == 1  # the one refused n call, then 5 parallel calls
    assert s1["requests"] == 6
    assert r1.usage.total_tokens == s1["total_tokens"]
    ask(p.client, "math", "What is 20 + 22?", 3)
    s2 = p.sim_stats()
    assert s2["errors"] == 1 and s2["requests"] == 11  # it remembered: no second refused call


def test_top_up_when_upstream_returns_fewer_choices(make_proxy, fresh_sim):
    route = {**VOTE_ROUTE, "generate": {"model": "sim-max2", "n": 5, "temperature": 0.8}}
    p = make_proxy({"routes": [route]}, fresh_sim)
    r = ask(p.client, "math", "What is 2 + 2?", 4)
    assert r.model_extra["its"]["candidates"] == 5
    assert r.usage.total_tokens == p.sim_stats()["total_tokens"]


def test_client_lowers_n_within_limits(proxy):
    before = proxy.sim_stats()
    r = ask(proxy.client, "math", "What is 5 + 6?", 1, extra_body={"its": {"n": 3}})
    assert r.model_extra["its"]["candidates"] == 3
    assert proxy.sim_stats()["choices"] - before["choices"] == 3


def test_route_n_wins_over_client_n_and_seed_is_derived(proxy):
    r = ask(proxy.client, "math", "What is 40 + 2?", 9, n=1)
    its = r.model_extra["its"]
    assert its["candidates"] == 9
    assert len({e["tokens"]["completion"] for e in its["evidence"]}) > 1  # not nine identical candidates


def test_same_seed_same_answer(proxy):
    a = ask(proxy.client, "math", "What is 31 + 12?", 77)
    b = ask(proxy.client, "math", "What is 31 + 12?", 77)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.model_extra["its"]["votes"] == b.model_extra["its"]["votes"]


def test_partial_failure_degrades(make_proxy, fresh_sim):
    pool = {"models": [{"model": "sim", "n": 3}, {"model": "sim-broken", "n": 3}], "temperature": 0.8}
    route = {**VOTE_ROUTE, "generate": pool}
    p = make_proxy({"routes": [route]}, fresh_sim)
    r = ask(p.client, "math", "What is 1 + 1?", 1)
    assert r.model_extra["its"]["candidates"] == 3
    assert r.model_extra["its"]["usage"]["calls_by_outcome"] == {"ok": 1, "error": 1}


def test_min_candidates_enforced(make_proxy, fresh_sim):
    pool = {"models": [{"model": "sim", "n": 3}, {"model": "sim-broken", "n": 3}], "temperature": 0.8}
    route = {**VOTE_ROUTE, "generate": pool, "min_candidates": 4}
    p = make_proxy({"routes": [route]}, fresh_sim)
    r = p.http.post("/v1/chat/completions", json={"model": "math", "messages": [{"role": "user", "content": "What is 1 + 1?"}]})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"


def test_vote_beats_a_single_sample_by_ten_points(make_proxy, sim):
    p = make_proxy({"routes": [VOTE_ROUTE, PASS_ROUTE]}, sim)
    qs = questions(seed=2024, count=100)

    def score(model):
        def one(item):
            i, (q, truth) = item
            r = ask(p.client, model, q, 1000 + i, temperature=0.8)
            return str(truth) in (r.choices[0].message.content or "").split()[-1]
        with ThreadPoolExecutor(8) as pool:
            return sum(pool.map(one, enumerate(qs)))

    single, voted = score("sim"), score("math")
    print(f"single-sample {single}/100, vote n=9 {voted}/100")
    assert voted >= single + 10
