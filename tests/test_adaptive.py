"""Adaptive compute end to end: early stopping, its metrics, stream cancellation and
budgets, over real loopback HTTP with the openai SDK (the rules themselves are
unit-tested in test_adaptive_rules.py)."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import sim_models
from itsproxy.proxy.metering.tokens import count_messages, count_text
from itsproxy.proxy.simulator import SimConfig, parse_question
from itsproxy.proxy.simulator import serve_in_thread as serve_simulator
from itsproxy.proxy.simulator.model import FILLERS, TEMPLATES

EASY = "sim-easy"  # every question easy: p in [0.90, 0.99]
QUESTIONS = ["What is 12 + 30?", "What is 250 + 17?", "What is 48 + 51?", "What is 1234 + 567?",
             "What is 77 + 66?", "What is 905 + 88?"]


def adaptive_route(name: str, model: str = EASY, n: int = 16, **adaptive) -> dict:
    spec = {"rule": "beta", "confidence": 0.95, "min": 2, "batch": 1, "mode": "batch", **adaptive}
    return {"name": name, "match": {"model": name}, "select": [{"vote": {"extract": "number"}}],
            "generate": {"model": model, "n": n, "temperature": 0.8, "adaptive": spec},
            "limits": {"max_n": n, "timeout_s": 20}}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ask(client: openai.OpenAI, model: str, question: str, seed: int):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], seed=seed)


def saved_total(p, route: str) -> float:
    text = p.http.get("/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "its_candidates_saved_total" and s.labels.get("route") == route)


def test_beta_stops_early_on_an_easy_question_and_meters_exactly(make_proxy, fresh_sim):
    name = unique("adaptive-beta")
    p = make_proxy({"model_list": sim_models(fresh_sim.url, **{EASY: "sim@easy_share=1"}),
                    "routes": [adaptive_route(name)]}, fresh_sim)
    saved_before = saved_total(p, name)
    saved = 0
    for i, q in enumerate(QUESTIONS[:3]):
        before = p.sim_stats()
        r = ask(p.client, name, q, seed=100 + i)
        after = p.sim_stats()
        its = r.model_extra["its"]
        stop = its["stop"]
        assert stop["rule"] == "beta" and stop["reason"] == "confident", stop
        assert stop["max"] == 16 and 4 <= stop["drawn"] < 16  # beta at 0.95 needs 4 unanimous votes at least
        assert its["candidates"] == stop["drawn"] == len(its["evidence"])
        assert stop["saved"] == 16 - stop["drawn"]
        assert stop["posterior"] >= 0.95
        # Batch mode: every call finished, so the usage is what the upstream served, to the token.
        served = after["total_tokens"] - before["total_tokens"]
        assert r.usage.total_tokens == served == its["usage"]["total"]["total_tokens"]
        assert r.usage.completion_tokens == after["completion_tokens"] - before["completion_tokens"]
        assert its["usage"]["calls"] == after["requests"] - before["requests"]
        assert its["usage"]["calls_by_outcome"] == {"ok": its["usage"]["calls"]}
        assert after["choices"] - before["choices"] == stop["drawn"]
        assert its["usage"]["estimated"] is False
        top = max(its["votes"].values())
        assert its["votes"][its["evidence"][its["selected"]]["answer"]] == top
        saved += stop["saved"]
    # /metrics: its_candidates_saved_total{route=...} grew by exactly the sum of its.stop.saved.
    assert saved > 0
    assert saved_total(p, name) - saved_before == saved


# ---------------------------------------------------------------- stream mode

STREAM_SIM = SimConfig(seed=11, easy_share=1.0, stream_delay_ms=20.0, latency_jitter_ms=30.0)


def longest_reply(question: str) -> int:
    """The most completion tokens any simulator reply to `question` can carry: every
    template and filler, with every answer the simulator can sample (the truth, the
    common wrong answer within +-10, near misses up to +-100, or truth + 1000...)."""
    a, b = parse_question(question)
    truth = a + b
    answers = [truth + d for d in range(-100, 101)] + [truth + 1000 + d for d in range(4)]
    return max(count_text(t.format(a=a, b=b, x=x, f=f)) for t in TEMPLATES for f in FILLERS for x in answers)


@pytest.fixture
def stream_sim():
    handle = serve_simulator(STREAM_SIM)
    yield handle
    handle.stop()


def test_stream_mode_cancels_upstream_work_and_bounds_the_estimate(make_proxy, stream_sim):
    """Four single-candidate streams in flight; once beta is confident the rest are closed.

    What the two sides count for a cancelled stream differs, by design:
    - the simulator bills the prompt P for every stream it started, plus the completion
      tokens of the chunks it wrote before the close;
    - the proxy meters what it received (marked `estimated`): P plus the tokens of the
      text it read, or nothing at all when no content had arrived yet.
    So per cancelled call the proxy is short by at most one prompt plus the chunks still
    in flight (never more than the whole reply R), and never over (the text it read was
    written; re-tokenizing a prefix cut on a token boundary gives the same count, 1
    token of slack per call). Finished calls carry the upstream's own usage: exact.
    Bound asserted: 0 - cancelled <= served - usage <= cancelled * (P + R).
    Measured (20 ms per 3-token chunk, 0-30 ms jitter, 2-3 cancelled calls a request):
    served - usage is 0, 15, 30 or 45 (P = 15 per cancelled stream that had sent no
    content yet: the proxy meters those as 0 tokens), sometimes 2-5 tokens more
    (chunks written but not read yet); never negative.
    """
    name = unique("adaptive-stream")
    p = make_proxy({"model_list": sim_models(stream_sim.url),
                    "routes": [adaptive_route(name, model="sim", mode="stream", batch=4)]}, stream_sim)
    cancelled_total, estimated_seen = 0, False
    for i, q in enumerate(QUESTIONS):
        before = p.sim_stats()
        r = ask(p.client, name, q, seed=200 + i)
        after = p.sim_stats()
        its = r.model_extra["its"]
        usage = its["usage"]
        stop = its["stop"]
        assert stop["reason"] == "confident" and stop["drawn"] < 16
        delta = {k: after[k] - before[k] for k in ("total_tokens", "streams", "streams_cancelled",
                                                   "completion_tokens_sent_cancelled", "requests")}
        cancelled = usage["calls_by_outcome"].get("cancelled", 0)
        # One call per candidate started (a draw cancelled before its call began has none).
        assert its["candidates"] <= usage["calls"] <= stop["drawn"]
        assert delta["requests"] <= usage["calls"]  # a call cancelled before it was sent never arrives
        if cancelled:
            assert its["candidates"] < stop["drawn"]
        prompt = count_messages([{"role": "user", "content": q}])
        reply = longest_reply(q)
        served = delta["total_tokens"]
        # The simulator's bill for its cancelled streams is what it says: P each plus the chunks it sent.
        finished = sum(e["tokens"]["prompt"] + e["tokens"]["completion"] for e in its["evidence"])
        assert served - finished >= delta["streams_cancelled"] * prompt + delta["completion_tokens_sent_cancelled"]
        gap = served - r.usage.total_tokens
        assert -cancelled <= gap <= cancelled * (prompt + reply), (gap, cancelled, prompt, reply, delta)
        if cancelled and usage["estimated"]:
            estimated_seen = True
        cancelled_total += delta["streams_cancelled"]
    # Cancellation reached the upstream: the simulator saw streams closed part-way...
    assert cancelled_total > 0
    # ...and at least one response metered a cancelled stream from the text it had read.
    assert estimated_seen


# ---------------------------------------------------------------- budgets

def test_budgets_refuse_a_key_past_its_daily_tokens_even_after_restart(make_proxy, fresh_sim, tmp_path):
    k1, k2 = "sk-budget-one-1111", "sk-budget-two-2222"
    path = str(tmp_path / "budgets.sqlite3")
    config = {"routes": [adaptive_route("budget-math", model="sim", n=8, batch=4)],
              "server": {"api_keys": [k1, k2]}, "budgets": {"tokens_per_day": 300, "path": path}}
    p1 = make_proxy(config, fresh_sim, api_key=k1)
    spent = 0
    for i in range(50):  # served while under the limit; the request that crosses it is still served
        try:
            spent += ask(p1.client, "budget-math", QUESTIONS[i % len(QUESTIONS)], seed=i).usage.total_tokens
        except openai.RateLimitError as exc:
            err = exc
            break
    else:
        pytest.fail("never refused")
    assert spent >= 300 and i >= 1
    assert err.status_code == 429 and err.code == "budget_exceeded"
    assert int(err.response.headers["retry-after"]) > 0
    assert err.response.headers["x-should-retry"] == "false"
    assert err.body["budget"] == "tokens_per_day" and err.body["spent"] == spent
    before = p1.sim_stats()["requests"]
    with pytest.raises(openai.RateLimitError):
        ask(p1.client, "budget-math", QUESTIONS[0], seed=1)
    assert p1.sim_stats()["requests"] == before  # refused before any upstream call
    # Another key has its own budget.
    k2_client = openai.OpenAI(base_url=p1.handle.base_url, api_key=k2, max_retries=0, timeout=30)
    assert ask(k2_client, "budget-math", QUESTIONS[1], seed=2).choices[0].message.content
    k2_client.close()
    p1.stop()  # shuts the app down (closes the budget store)

    # A new proxy on the same budgets file still refuses k1, and still serves k2.
    p2 = make_proxy(config, fresh_sim, api_key=k1)
    with pytest.raises(openai.RateLimitError) as again:
        ask(p2.client, "budget-math", QUESTIONS[2], seed=3)
    assert again.value.code == "budget_exceeded" and again.value.body["spent"] == spent
    r = httpx.post(f"{p2.url}/v1/chat/completions", headers={"authorization": f"Bearer {k2}"}, timeout=30,
                   json={"model": "budget-math", "messages": [{"role": "user", "content": QUESTIONS[3]}]})
    assert r.status_code == 200, r.text
