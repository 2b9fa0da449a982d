"""The Completions and Embeddings surfaces, /v1/models/{id}, and the client's own `n`, through the
official SDK, on passthrough and on scaling routes."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import VOTE_ROUTE

FEW_SHOT = "Q: What is 2 + 3?\nA: 5\n\nQ: What is 17 + 25?\nA:"


@pytest.fixture
def surfaces(make_proxy, sim):
    base = {"model": "base", "litellm_params": {"model": "openai/sim", "api_base": f"{sim.url}/v1", "api_key": "k"},
            "model_info": {"mode": "completion"}}
    routes = [VOTE_ROUTE,
              {"name": "base-vote", "match": {"model": "base-vote"}, "generate": {"model": "base", "n": 5}, "limits": {"max_n": 8},
               "select": [{"vote": {"extract": "number"}}]},
              {"name": "pass", "match": {"model": "*"}, "generate": {"model": "sim"}, "passthrough": True}]
    from tests.conftest import sim_models
    models = [*sim_models(sim.url), {"model_name": base.pop("model"), **base}]
    return make_proxy({"model_list": models, "routes": routes}, sim)


def test_completions_passthrough_native(surfaces):
    before = surfaces.sim_stats()
    r = surfaces.client.completions.create(model="sim", prompt=FEW_SHOT, temperature=0, logprobs=2, echo=True)
    after = surfaces.sim_stats()
    assert r.object == "text_completion" and r.choices[0].text.startswith(FEW_SHOT)
    assert r.choices[0].text[len(FEW_SHOT):].strip() == "42"
    assert r.choices[0].logprobs.tokens  # the upstream's own completions logprobs, relayed
    assert r.usage.total_tokens == after["total_tokens"] - before["total_tokens"]
    assert r.model_extra["its"]["strategy"] == "passthrough"


def test_completions_stream_passthrough_with_usage(surfaces):
    chunks = list(surfaces.client.completions.create(model="sim", prompt=FEW_SHOT, temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip() == "42"
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and usage[0].total_tokens > 0
    assert chunks[-1].model_extra["its"]["strategy"] == "passthrough"


def test_completions_on_a_vote_route_over_a_base_model(surfaces):
    before = surfaces.sim_stats()
    r = surfaces.client.completions.create(model="base-vote", prompt=FEW_SHOT, seed=3)
    after = surfaces.sim_stats()
    its = r.model_extra["its"]
    assert its["candidates"] == 5 and its["strategy"] == "vote"
    assert r.choices[0].text.strip() == "42"  # a bare few-shot answer: the base model got a raw prompt
    assert r.usage.total_tokens == after["total_tokens"] - before["total_tokens"]


def test_completions_scaling_stream_and_best_of(surfaces):
    chunks = list(surfaces.client.completions.create(model="base-vote", prompt=FEW_SHOT, seed=4, stream=True,
                                                     stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip()
    assert [c for c in chunks if c.usage] and chunks[-1].model_extra["its"]["candidates"] == 5
    r = surfaces.client.completions.create(model="base-vote", prompt=FEW_SHOT, seed=5, n=2, best_of=6)
    assert len(r.choices) == 2 and r.model_extra["its"]["candidates"] == 6


def test_completions_scaling_refuses_batched_prompts(surfaces):
    with pytest.raises(openai.BadRequestError) as exc:
        surfaces.client.completions.create(model="base-vote", prompt=["a", "b"])
    assert exc.value.body["param"] == "prompt"


def test_client_n_on_a_vote_route_returns_the_best_distinct_answers(surfaces):
    r = surfaces.client.chat.completions.create(model="math", messages=[{"role": "user", "content": "What is 9 + 8?"}],
                                                n=3, seed=11)
    its = r.model_extra["its"]
    assert len(r.choices) == 3 and [c.index for c in r.choices] == [0, 1, 2]
    winner = next(e for e in its["evidence"] if e["index"] == its["selected"])
    assert winner["answer"] in r.choices[0].message.content  # the winner leads
    answers = [e["answer"] for e in its["evidence"]]
    assert its["candidates"] >= 9  # the route's n, at least the client's
    distinct = len({a for a in answers if a is not None})
    shown = [next((a for a in answers if a and a in c.message.content), None) for c in r.choices]
    assert len(set(shown)) == min(3, distinct)  # distinct answers first


def test_overrides_are_said(surfaces):
    r = surfaces.client.chat.completions.create(model="math", messages=[{"role": "user", "content": "What is 1 + 1?"}],
                                                temperature=0)
    assert r.model_extra["its"]["overrides"] == {"temperature": {"client": 0, "route": 0.8}}


def test_embeddings_passthrough_metered(surfaces):
    before = surfaces.sim_stats()
    r = surfaces.client.embeddings.create(model="sim", input=["a cat", "a dog"], dimensions=8)
    after = surfaces.sim_stats()
    assert len(r.data) == 2 and len(r.data[0].embedding) == 8
    assert r.usage.prompt_tokens == after["prompt_tokens"] - before["prompt_tokens"] > 0
    with pytest.raises(openai.BadRequestError) as exc:
        surfaces.client.embeddings.create(model="math", input="x")
    assert exc.value.body["code"] == "not_scalable"


def test_model_by_id(surfaces):
    assert surfaces.client.models.retrieve("math").id == "math"
    assert surfaces.client.models.retrieve("anything/else").id == "anything/else"  # the "*" route serves it
    assert surfaces.http.get("/v1/models/math").json()["object"] == "model"
