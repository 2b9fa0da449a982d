"""The lean HTTP path and the litellm path behave the same through the proxy."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from conftest import PASS_ROUTE, VOTE_ROUTE

MSG = [{"role": "user", "content": "What is 19 + 23?"}]
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(params=["auto", "litellm"])
def both(request, make_proxy, fresh_sim):
    routes = [VOTE_ROUTE, {**VOTE_ROUTE, "name": "fan", "match": {"model": "fan"},
                           "generate": {"model": "sim-no-n", "n": 4, "temperature": 0.8}}, PASS_ROUTE]
    p = make_proxy({"routes": routes, "server": {"upstream_client": request.param}}, fresh_sim)
    expected = "DirectBackend" if request.param == "auto" else "LitellmBackend"
    assert type(p.services.upstream.backend(p.services.config.models["sim"])).__name__ == expected
    return p


def test_passthrough(both):
    r = both.client.chat.completions.create(model="sim", messages=MSG, seed=1)
    assert "42" in r.choices[0].message.content
    assert r.usage.total_tokens == both.sim_stats()["total_tokens"]


def test_passthrough_stream(both):
    chunks = list(both.client.chat.completions.create(model="sim", messages=MSG, stream=True,
                                                      stream_options={"include_usage": True}))
    assert "42" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.total_tokens == both.sim_stats()["total_tokens"]


def test_vote_native_n(both):
    r = both.client.chat.completions.create(model="math", messages=MSG, seed=2)
    assert r.model_extra["its"]["candidates"] == 9
    s = both.sim_stats()
    assert s["requests"] == 1 and r.usage.total_tokens == s["total_tokens"]


def test_vote_fan_out(both):
    r = both.client.chat.completions.create(model="fan", messages=MSG, seed=2)
    assert r.model_extra["its"]["candidates"] == 4
    assert r.usage.total_tokens == both.sim_stats()["total_tokens"]


def test_tool_calls(both):
    r = both.client.chat.completions.create(model="sim", messages=MSG, tools=TOOLS, tool_choice="required")
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments)["a"] == 19


def test_upstream_4xx(both):
    with pytest.raises(openai.BadRequestError):
        both.client.chat.completions.create(model="sim-bad", messages=MSG)


def test_upstream_5xx_is_502(both, make_proxy):
    r = both.http.post("/v1/chat/completions", json={"model": "sim-broken", "messages": MSG})
    assert r.status_code == 502


@pytest.mark.parametrize("client", ["auto", "litellm"])
def test_num_retries_recovers_from_transient_failures(make_proxy, fresh_sim, client):
    # The simulator fails half its requests; with retries every passthrough still succeeds.
    p = make_proxy({"routes": [], "server": {"num_retries": 6, "upstream_client": client}}, fresh_sim)
    httpx.post(f"{fresh_sim.url}/control", json={"fail_rate": 0.5, "fail_status": 503})
    for i in range(3):
        r = p.client.chat.completions.create(model="sim", messages=MSG, seed=i)
        assert r.choices[0].message.content
    stats = p.sim_stats()
    assert stats["errors"] > 0 and stats["requests"] == stats["errors"] + 3
