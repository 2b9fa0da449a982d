"""When a selector has nothing to select on, the route's `on_no_answer` decides and `its.fallback`
says so: known before drawing (a tool-call vote after a tool result), one call's cost, not n."""

from __future__ import annotations

import openai
import pytest

TOOL_TURN = [{"role": "user", "content": "What is the weather in Paris?"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
             {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}]
NEVER = {"vote": {"extract": "regex", "pattern": "NEVER-MATCHES-(\\d+)"}}


def _route(name: str, select: list, **extra) -> dict:
    return {"name": name, "match": {"model": name}, "generate": {"model": "sim", "n": 5, "temperature": 0.8},
            "select": select, **extra}


@pytest.fixture
def fallback_proxy(make_proxy, sim):
    routes = [_route("tools", [{"vote": {"extract": "tool_call"}}]),
              _route("tools-pass", [{"vote": {"extract": "tool_call"}}], on_no_answer="passthrough"),
              _route("never", [NEVER]),
              _route("never-strict", [NEVER], on_no_answer="error")]
    return make_proxy({"routes": routes}, sim)


def test_tool_vote_after_a_tool_result_draws_one(fallback_proxy):
    before = fallback_proxy.sim_stats()
    r = fallback_proxy.client.chat.completions.create(model="tools", messages=TOOL_TURN, seed=1)
    after = fallback_proxy.sim_stats()
    its = r.model_extra["its"]
    assert its["candidates"] == 1 and after["choices"] - before["choices"] == 1  # one call's cost, not 5
    assert its["fallback"]["action"] == "first" and "tool result" in its["fallback"]["reason"]
    r = fallback_proxy.client.chat.completions.create(model="tools-pass", messages=TOOL_TURN, seed=1)
    assert r.model_extra["its"]["fallback"]["action"] == "passthrough"


def test_no_extractable_answer_says_so(fallback_proxy):
    r = fallback_proxy.client.chat.completions.create(model="never", messages=[{"role": "user", "content": "What is 2 + 2?"}])
    its = r.model_extra["its"]
    assert its["candidates"] == 5 and its["fallback"] == {"reason": "no_extractable_answer", "action": "first"}
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        fallback_proxy.client.chat.completions.create(model="never-strict",
                                                      messages=[{"role": "user", "content": "What is 2 + 2?"}])
    assert exc.value.body["code"] == "no_answer"


def test_on_no_answer_is_validated(make_proxy, sim):
    from itsproxy.proxy.config import ConfigError, parse_config
    from tests.conftest import sim_models
    with pytest.raises(ConfigError) as exc:
        parse_config({"model_list": sim_models(sim.url), "routes": [_route("x", [NEVER], on_no_answer="guess")]})
    assert "on_no_answer" in str(exc.value)
