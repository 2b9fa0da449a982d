"""A search over reasoning steps on a real model: gemma-3-270m under llama.cpp, through the proxy.

Beam and MCTS with the `confidence` scorer on the completion-mode model, streamed and not: the
proxy's `usage` is what llama.cpp reported over every search call (the search's calls are not
streamed, so even a streamed answer's usage is exact), and `its.search_steps` is filled. Tiny
budgets (depth 1, two expansions): these check plumbing and metering, not accuracy
(`python -m bench.steps --real` measures that).
"""

from __future__ import annotations

import pytest

from bench.steps_real import FINAL, PARAMS, problems
from tests.llama_helpers import MODEL_NAME, Relay, llama, llama_models, relay  # noqa: F401  (fixtures)
from tests.test_real_model import client_of, reported_total

STEPS = {"delimiter": "\n", "final": FINAL, "max_depth": 1, "expansions": 2, "guard": "off"}
ROUTES = [{"name": method, "match": {"model": method}, "generate": {"model": MODEL_NAME, "temperature": 0.8,
           "steps": STEPS | {"method": method, "width": 1, "rollouts": 1}}} for method in ("beam", "mcts")]


@pytest.fixture
def stepper(make_proxy, llama, relay):  # noqa: F811
    return make_proxy({"model_list": llama_models(relay.base_url), "routes": ROUTES}, llama)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("method", ["beam", "mcts"])
def test_a_step_search_on_llama_meters_what_llama_served(stepper, relay, method, stream):
    prompt, _ = problems(1)[0]
    client = client_of(stepper)
    if stream:
        chunks = list(client.completions.create(model=method, prompt=prompt, seed=3, stream=True,
                                                stream_options={"include_usage": True}, **PARAMS))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        its = next(c.model_extra["its"] for c in chunks if (c.model_extra or {}).get("its"))
        usage = next(c.usage for c in chunks if c.usage is not None)
    else:
        r = client.completions.create(model=method, prompt=prompt, seed=3, **PARAMS)
        text, its, usage = r.choices[0].text, r.model_extra["its"], r.usage
    reported = reported_total(relay)  # every search call, as llama.cpp counted it
    assert usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == reported
    assert its["usage"]["total"] == reported and its["usage"]["estimated"] is False
    assert set(its["usage"]["by_phase"]) == {"search"} and its["usage"]["calls"] == len(relay.responses)
    ev = its["search_steps"]
    assert ev["method"] == method and ev["calls"] >= 2 and ev["chains"] >= 1 and ev["depth"] >= 1
    assert ev["best_scores"] and all(0 < s <= 1 for s in ev["best_scores"])  # from llama.cpp's logprobs
    assert text.strip()
