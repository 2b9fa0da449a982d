"""/v1/responses refuses what it cannot do with a 400 that names it (stateless keys, hosted tools,
unknown keys, bad types), and random bodies never get a 500."""

from __future__ import annotations

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PASS_ROUTE, VOTE_ROUTE, Proxy, sim_models
from itsproxy.proxy.config import parse_config
from itsproxy.proxy.http.app import create_app
from itsproxy.proxy.serving import embedded_config, serve_in_thread

Q = "What is 17 + 25?"


def refused(proxy, **kwargs) -> dict:
    with pytest.raises(openai.BadRequestError) as exc:
        proxy.client.responses.create(**{"model": "sim", "input": Q, **kwargs})
    return exc.value.body


def test_previous_response_id_is_refused_statelessly(proxy):
    err = refused(proxy, previous_response_id="resp_123")
    assert err["code"] == "stateless" and err["param"] == "previous_response_id"
    assert "send the conversation in `input`" in err["message"]


def test_store_true_is_refused_and_false_is_fine(proxy):
    err = refused(proxy, store=True)
    assert err["code"] == "stateless" and err["param"] == "store"
    assert proxy.client.responses.create(model="sim", input=Q, store=False).store is False


def test_conversation_and_item_reference_are_refused(proxy):
    assert refused(proxy, conversation="conv_1")["code"] == "stateless"
    err = refused(proxy, input=[{"type": "item_reference", "id": "msg_1"}])
    assert err["param"] == "input[0]" and "stateless" in err["message"]


@pytest.mark.parametrize("tool", ["web_search", "file_search", "code_interpreter", "mcp", "image_generation"])
def test_hosted_tools_are_refused_naming_function_tools(proxy, tool):
    err = refused(proxy, tools=[{"type": tool}])
    assert err["code"] == "unsupported_tool" and tool in err["message"] and "function" in err["message"]


@pytest.mark.parametrize("key,value", [("max_tool_calls", 3), ("prompt", {"id": "pmpt_1"}),
                                       ("context_management", [{"type": "compaction"}]), ("whatever", 1)])
def test_unknown_keys_are_named(proxy, key, value):
    err = refused(proxy, extra_body={key: value})
    assert err["param"] == key and key in err["message"]


@pytest.mark.parametrize("kwargs,param", [
    ({"background": True}, "background"),
    ({"truncation": "auto"}, "truncation"),
    ({"reasoning": {"effort": "low", "summary": "auto"}}, "reasoning.summary"),
    ({"include": ["file_search_call.results"]}, "include"),
    ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input[0]"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0]"),
    ({"tool_choice": {"type": "function", "name": "add"}}, "tool_choice"),
])
def test_what_has_no_chat_meaning_is_refused(proxy, kwargs, param):
    assert refused(proxy, **kwargs)["param"] == param


@pytest.mark.parametrize("body,param", [
    ({"input": 5}, "input"),
    ({"input": []}, "input"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 3}]}]}, "input[0].content[0].text"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "input[0].content[0].image_url"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]}, "input[0].arguments"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output"),
    ({"temperature": "hot"}, "temperature"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": [{"type": "function"}]}, "tools[0].name"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"text": {"format": {"type": "json_schema", "name": "A"}}}, "text.format.schema"),
    ({"stream": "yes"}, "stream"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"its": {"n": 0}}, "its.n"),
    ({"its": {"bogus": 1}}, "its.bogus"),
    ({"model": ""}, "model"),
])
def test_bad_types_are_400s_naming_the_field(proxy, body, param):
    r = proxy.http.post("/v1/responses", json={"model": "sim", "input": Q, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_steering_keys_are_forbidden(proxy):
    r = proxy.http.post("/v1/responses", json={"model": "sim", "input": Q, "api_base": "http://evil"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "forbidden_parameter"


def test_explicit_nulls_mean_not_given(proxy):
    r = proxy.http.post("/v1/responses", json={"model": "sim", "input": Q, "previous_response_id": None,
                                               "store": None, "tools": None, "max_tool_calls": None})
    assert r.status_code == 200, r.text


def test_its_n_above_the_route_limit_is_400_even_streaming(proxy):
    r = proxy.http.post("/v1/responses", json={"model": "math", "input": Q, "stream": True, "its": {"n": 99}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "n_above_limit"


# -- fuzz ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10)
part = st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text", "input_image", "refusal", "x"])},
                             optional={"text": json_values, "image_url": json_values, "refusal": json_values})
item = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "developer", "assistant", "tool"])},
                          optional={"type": st.just("message"), "content": st.one_of(st.text(max_size=20),
                                                                                      st.lists(part, max_size=2))}),
    st.fixed_dictionaries({"type": st.sampled_from(["function_call", "function_call_output", "reasoning"])},
                          optional={"call_id": json_values, "name": json_values, "arguments": json_values,
                                    "output": json_values}),
    json_values)
KEYS = ["instructions", "tools", "tool_choice", "text", "reasoning", "max_output_tokens", "temperature", "top_p",
        "parallel_tool_calls", "metadata", "user", "store", "its", "include", "top_logprobs", "truncation",
        "previous_response_id", "background", "stream_options"]
body = st.fixed_dictionaries(
    {"model": st.sampled_from(["math", "sim", "", 7]), "input": st.one_of(st.text(max_size=20),
                                                                          st.lists(item, max_size=3), json_values)},
    optional={k: json_values for k in KEYS})


@pytest.fixture(scope="module")
def fuzz_proxy(sim):
    app = create_app(parse_config({"model_list": sim_models(sim.url),
                                   "routes": [{**VOTE_ROUTE, "generate": {**VOTE_ROUTE["generate"], "n": 2},
                                               "limits": {"timeout_s": 5}}, PASS_ROUTE]}))
    p = Proxy(serve_in_thread(embedded_config(app)), sim)
    yield p
    p.stop()


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=st.one_of(body, json_values))
def test_random_bodies_never_500(fuzz_proxy, payload):
    r = fuzz_proxy.http.post("/v1/responses", json=payload, timeout=15)
    assert r.status_code != 500, r.text
    if r.status_code >= 400:
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["message"] and {"type", "param", "code"} <= set(err)
    else:
        assert r.json()["object"] == "response"
