"""Search over reasoning steps (generate.steps): beam and MCTS logic on a scripted fake
sampler, config errors, and end to end through the proxy against the simulator's step mode."""

from __future__ import annotations

import asyncio
import json
import math
import re

import httpx
import pytest

from conftest import sim_models
from fakes import Call, FakeSampler, context
from itsproxy.proxy.config import parse_config
from itsproxy.proxy.config_fields import ConfigError
from itsproxy.strategies.generate import parse_generate
from itsproxy.strategies.pipeline import build_pipeline
from itsproxy.strategies.search.steps import parse_steps, token_confidence
from itsproxy.strategies.search.steps_run import StepSearch
from itsproxy.strategies.types import SpecError

Q7 = "Start at 7, add 5, multiply by 3, subtract 4. What is the result?"


def world(call: Call, i: int) -> str:
    """Three steps; choice 2 of an expansion is right, 0 and 1 wrong; a rollout writes the rest right."""
    partial = call.messages[-1]["content"]
    done = partial.count("\n") - 1  # the partial opens with the delimiter
    if "stop" not in call.params:
        rest = [f"s{d} ok" for d in range(done + 1, 4)]
        return "\n".join(rest + [f"The answer is {3 - partial.count('bad')}."])
    if done == 3:
        return f"The answer is {3 - partial.count('bad')}."
    return f"s{done + 1} {'ok' if i == 2 else 'bad'}"


def logprobs(call: Call, reply: str) -> dict:
    tokens = reply.replace("\n", " \n ").split(" ")
    p = [0.3 if "bad" in t else 0.9 for t in tokens]
    return {"content": [{"token": t, "logprob": math.log(q), "top_logprobs": [
        {"token": t, "logprob": math.log(q)}, {"token": "x", "logprob": math.log(0.05)}]} for t, q in zip(tokens, p)]}


def run(method: str, **steps):
    sampler = FakeSampler(world, logprobs=logprobs)
    gen = parse_generate({"model": "m", "steps": {"method": method, **steps}}, "g", {"m"})
    ctx = context(sampler, 1, messages=[{"role": "user", "content": "q"}])
    search = StepSearch(ctx, gen, gen.steps)
    asyncio.run(search.beam() if method == "beam" else search.mcts())
    return search, sampler, ctx


def test_token_confidence_renormalises_over_the_top_alternatives():
    e = {"token": "a", "logprob": math.log(0.6), "top_logprobs": [{"token": "a", "logprob": math.log(0.6)},
                                                                   {"token": "b", "logprob": math.log(0.2)}]}
    assert token_confidence(e) == pytest.approx(0.75)
    assert token_confidence({"token": "a", "logprob": math.log(0.6)}) == pytest.approx(0.6)
    assert token_confidence({"token": "a", "logprob": None}) is None


def test_beam_keeps_the_confident_steps_and_every_call_is_a_search_call():
    search, sampler, _ = run("beam", width=1, expansions=3)
    best = search.candidates()[0]
    assert best.text == "s1 ok\ns2 ok\ns3 ok\nThe answer is 3."
    assert len(sampler.calls) == 4 and {c.phase for c in sampler.calls} == {"search"}
    first = sampler.calls[0]
    assert first.n == 3 and first.params["stop"] == ["\n"] and first.params["logprobs"] is True
    assert first.params["top_logprobs"] == 5 and first.messages[-1] == {"role": "assistant", "content": "\n"}
    assert sampler.calls[1].messages[-1]["content"] == "\ns1 ok\n"
    ev = search.evidence()
    assert ev.calls == 4 and ev.depth == 4 and ev.nodes == 13 and ev.chains == 3
    assert len(ev.best_scores) == 4 and min(ev.best_scores) > 0.8


def test_wider_beams_keep_more_paths_and_max_depth_finishes_in_one_call():
    search, sampler, _ = run("beam", width=2, expansions=3, max_depth=2)
    assert [c.n for c in sampler.calls] == [3, 3, 3, 1, 1]  # 1 + 2 expansions, then 2 finishing calls
    assert "stop" not in sampler.calls[-1].params
    texts = [c.text for c in search.candidates()]
    assert texts[0] == "s1 ok\ns2 ok\ns3 ok\nThe answer is 3." and len(texts) == 2


def test_mcts_visits_the_confident_child_most_and_rolls_out_complete_chains():
    search, sampler, _ = run("mcts", rollouts=8, expansions=2, c=0.5)
    assert [ch.text for ch in search.root.children] == ["s1 bad\n", "s1 bad\n"]
    assert all(c.text.endswith(".") for c in search.candidates())
    assert len(search.chains) == 8 and {c.phase for c in sampler.calls} == {"search"}
    search3, _, _ = run("mcts", rollouts=12, expansions=3, c=0.1, aggregate="min")
    kids = search3.root.children
    ok = next(ch for ch in kids if "ok" in ch.text)
    assert ok.visits == max(ch.visits for ch in kids) and ok.visits > sum(ch.visits for ch in kids) / 3
    assert search3.candidates()[0].text == "s1 ok\ns2 ok\ns3 ok\nThe answer is 3."


def spaced_logprobs(call: Call, reply: str) -> dict:
    """Logprobs whose tokens join back to the reply (a newline is its own token)."""
    tokens = re.findall(r"\n|[^ \n]+ ?", reply)
    return {"content": [{"token": t, "logprob": math.log(0.9), "top_logprobs": [{"token": t, "logprob": math.log(0.9)}]}
                        for t in tokens]}


@pytest.mark.parametrize("method", ["beam", "mcts"])
def test_the_guards_probe_chains_seed_the_first_layer(method):
    def fresh() -> tuple[StepSearch, FakeSampler]:
        sampler = FakeSampler(world, logprobs=spaced_logprobs)
        steps = {"method": method, "width": 1, "expansions": 3, "rollouts": 1}
        gen = parse_generate({"model": "m", "steps": steps}, "g", {"m"})
        search = StepSearch(context(sampler, 1, messages=[{"role": "user", "content": "q"}]), gen, gen.steps)
        search.probes = asyncio.run(search._draw_chains(2))
        return search, sampler

    search, _ = fresh()
    assert search.seed() and [ch.text for ch in search.root.children] == ["s1 ok\n", "s1 ok\n"]
    assert [ch.visits for ch in search.root.children] == ([1, 1] if method == "mcts" else [0, 0])
    search, sampler = fresh()
    asyncio.run(search.beam() if method == "beam" else search.mcts())
    # after the probe call, no depth-0 expansion: the search's first call continues a probe's first step
    assert sampler.calls[1].messages[-1]["content"] == "\ns1 ok\n" and sampler.calls[1].n == 3


class PrmHttp:
    """A process reward endpoint: 1 for a prefix with no bad step, else 0 (generic API)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, list[str], str]] = []

    async def post_json(self, url: str, body: dict, *, phase: str, model: str, headers=None, timeout: float) -> dict:
        self.posts.append((url, body["candidates"], phase))
        return {"scores": [0.0 if "bad" in t else 1.0 for t in body["candidates"]]}


def test_a_process_reward_scores_every_prefix_and_steers_the_beam():
    sampler, http = FakeSampler(world), PrmHttp()  # no logprobs at all: the PRM alone decides
    steps = {"method": "beam", "width": 1, "expansions": 3, "score": "reward", "reward": {"url": "http://prm/r"}}
    gen = parse_generate({"model": "m", "steps": steps}, "g", {"m"})
    assert gen.steps.aggregate == "last" and gen.steps.reward.normalize == "logistic"
    ctx = context(sampler, 1, messages=[{"role": "user", "content": "q"}], http=http)
    search = StepSearch(ctx, gen, gen.steps)
    asyncio.run(search.beam())
    assert search.candidates()[0].text == "s1 ok\ns2 ok\ns3 ok\nThe answer is 3."
    assert http.posts[0] == ("http://prm/r", ["s1 bad\n", "s1 bad\n", "s1 ok\n"], "reward")
    assert http.posts[1][1][2] == "s1 ok\ns2 ok\n" and len(http.posts) == 4


def test_a_spend_cap_stops_the_search_and_still_returns_a_chain():
    sampler = FakeSampler(world, logprobs=logprobs)
    gen = parse_generate({"model": "m", "steps": {"method": "beam", "width": 3}}, "g", {"m"})
    ctx = context(sampler, 1, messages=[{"role": "user", "content": "q"}], max_extra_tokens=30)
    search = StepSearch(ctx, gen, gen.steps)
    asyncio.run(search.beam())
    assert search.stopped == "max_extra_tokens" and len(search.candidates()) == 1
    assert len(sampler.calls) < 6


@pytest.mark.parametrize("body,path,words", [
    ({"score": "vibes"}, "g.steps.score", "supported: confidence"),
    ({"score": "judge"}, "g.steps.judge", "needs `judge:"),
    ({"score": "judge", "judge": {"model": "nope"}}, "g.steps.judge.model", "model_list"),
    ({"score": "check"}, "g.steps.check", "needs `check:"),
    ({"score": "check", "check": {"regex": "x", "extract": "number"}}, "g.steps.check.extract", "partial text"),
    ({"check": {"regex": "x"}}, "g.steps.check", "only applies"),
    ({"guard": "maybe"}, "g.steps.guard", "probe, off"),
    ({"guard": {"chains": 2}}, "g.steps.guard.chains", ">= 3"),
    ({"guard": {"alpha": 0}}, "g.steps.guard.alpha", "(0, 1)"),
    ({"method": "dfs"}, "g.steps.method", "beam, mcts"),
    ({"width": 0}, "g.steps.width", ">= 1"),
    ({"delimiter": None}, "g.steps", "max_step_tokens"),
    ({"bogus": 1}, "g.steps.bogus", "unknown key"),
    ({"score": "reward"}, "g.steps.reward", "process reward endpoint"),
    ({"score": "reward", "reward": {"url": "http://x", "normalize": "auto"}}, "g.steps.reward.normalize", "logistic"),
    ({"reward": {"url": "http://x"}}, "g.steps.reward", "only applies"),
])
def test_bad_steps_config_names_the_key(body, path, words):
    with pytest.raises(SpecError) as err:
        parse_steps(body, "g.steps")
    assert err.value.path == path and words in err.value.message


def test_steps_need_one_model_and_a_continuing_upstream():
    with pytest.raises(SpecError, match="width, expansions") as err:
        parse_generate({"model": "m", "n": 4, "steps": {}}, "g", {"m"})
    assert err.value.path == "g.n"
    with pytest.raises(SpecError, match="single"):
        build_pipeline({"generate": {"models": [{"model": "m"}, {"model": "m"}], "steps": {}}}, "r", {"m"})
    route = {"name": "s", "match": {"model": "s"}, "generate": {"model": "sim", "steps": {"method": "beam"}}}
    with pytest.raises(ConfigError, match="mode: completion") as err:
        parse_config({"model_list": sim_models("http://x"), "routes": [route]})
    assert err.value.path == "routes[0].generate.steps"


# ---------------------------------------------------------------- end to end


@pytest.fixture
def stepper(make_proxy, fresh_sim):
    models = sim_models(fresh_sim.url, stepper="sim@step_signal=1@step_accuracy=0.7")
    for m in models:
        if m["model_name"] == "stepper":
            m["model_info"] = {"mode": "completion"}
    models += sim_models(fresh_sim.url, chatstep="sim@step_signal=1@step_accuracy=0.7")[-1:]
    chat = {"name": "chat", "match": {"model": "chat"},
            "generate": {"model": "chatstep", "steps": {"method": "beam", "continuation": "chat", "guard": "off"}}}
    prm = {"name": "prm", "match": {"model": "prm"},
           "generate": {"model": "stepper", "steps": {"method": "mcts", "rollouts": 4, "score": "reward",
                                                      "reward": {"url": f"{fresh_sim.url}/reward"}}}}
    routes = [chat, prm] + [{"name": m, "match": {"model": m}, "select": [{"vote": {"extract": "number"}}],
               "generate": {"model": "stepper", "temperature": 0.8,
                            "steps": {"method": m, "width": 2, "expansions": 3, "rollouts": 5}}}
              for m in ("beam", "mcts")]
    return make_proxy({"model_list": models, "routes": routes}, fresh_sim)


def stream_its(p, model: str) -> tuple[str, dict, dict]:
    body = {"model": model, "messages": [{"role": "user", "content": Q7}], "seed": 2, "stream": True,
            "stream_options": {"include_usage": True}}
    text, its, usage = "", {}, {}
    with httpx.stream("POST", f"{p.url}/v1/chat/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for ch in chunk.get("choices") or []:
                text += ch["delta"].get("content") or ""
            its = chunk.get("its") or its
            usage = chunk.get("usage") or usage
    return text, its, usage


@pytest.mark.parametrize("method", ["beam", "mcts"])
def test_search_through_the_proxy_meters_every_expansion(stepper, method):
    before = stepper.sim_stats()["total_tokens"]
    r = stepper.client.chat.completions.create(model=method, messages=[{"role": "user", "content": Q7}], seed=1)
    its = r.model_extra["its"]
    served = stepper.sim_stats()["total_tokens"] - before
    assert r.usage.total_tokens == served and its["usage"]["by_phase"].keys() == {"search"}
    ev = its["search_steps"]
    assert ev["method"] == method and ev["calls"] == its["usage"]["calls"] and ev["chains"] == its["candidates"]
    assert ev["best_scores"] and r.choices[0].message.content.rstrip().endswith(".")
    assert r.choices[0].message.content.startswith("Step 1: 7 + 5 = ")
    assert r.choices[0].logprobs is None
    before = stepper.sim_stats()["total_tokens"]
    text, sits, usage = stream_its(stepper, method)
    assert text.startswith("Step 1:") and "The answer is" in text
    assert sits["search_steps"]["method"] == method
    assert usage["total_tokens"] == stepper.sim_stats()["total_tokens"] - before


def test_chat_continuation_searches_step_by_step_and_the_client_stop_cuts_the_answer(stepper):
    r = stepper.client.chat.completions.create(model="chat", messages=[{"role": "user", "content": Q7}], seed=1,
                                               stop=["Step 3"])
    ev = r.model_extra["its"]["search_steps"]
    assert ev["depth"] == 4 and ev["calls"] > 4  # one call per step and beam, not one per chain
    text = r.choices[0].message.content
    assert text.startswith("Step 1: 7 + 5 = ") and "Step 3" not in text and text.count("\n") == 2


def test_the_simulator_chat_honours_stop(sim):
    with httpx.Client(base_url=sim.url, timeout=10) as http:
        body = {"model": "sim@step_accuracy=1", "messages": [{"role": "user", "content": Q7}], "temperature": 0}
        r = http.post("/v1/chat/completions", json={**body, "stop": "\n"})
        assert r.json()["choices"][0]["message"]["content"] == "Step 1: 7 + 5 = 12"
        bad = http.post("/v1/chat/completions", json={**body, "stop": 3})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "stop"


def test_a_process_reward_through_the_proxy_is_metered_beside_the_search(stepper):
    r = stepper.client.chat.completions.create(model="prm", messages=[{"role": "user", "content": Q7}], seed=3)
    its = r.model_extra["its"]
    assert set(its["usage"]["by_phase"]) == {"search", "reward"}
    assert its["search_steps"]["method"] == "mcts" and its["search_steps"]["best_score"] is not None
    assert "errors" not in its["search_steps"]


def test_the_simulator_reward_is_a_process_reward_on_chains(sim):
    cands = ["Step 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\n", "Step 1: 7 + 5 = 13\n",
             "Step 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\nStep 3: 36 - 4 = 32\nThe answer is 32.",
             "Step 1: 7 + 5 = 12\nStep 2: 12 * 3 = 36\nStep 3: 36 - 4 = 32\nThe answer is 31."]
    r = httpx.post(f"{sim.url}/reward", json={"model": "sim@reward_noise=0", "prompt": Q7, "candidates": cands})
    assert r.json()["scores"] == [1.0, 0.0, 1.0, 0.0]
