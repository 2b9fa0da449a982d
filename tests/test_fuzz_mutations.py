"""Mutations of valid request bodies (a field dropped, replaced, retyped, nested deep) never crash
the proxy: on chat and completions, passthrough and a vote route, streamed or not, the answer is
a 2xx or a 4xx in OpenAI's shape, never a 500 and never a 502 blamed on the upstream."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PASS_ROUTE, Proxy, proxy_starter

VOTE = {"name": "vote", "match": {"model": "math"}, "generate": {"model": "sim", "n": 3, "temperature": 0.8},
        "select": [{"vote": {"extract": "number"}}], "limits": {"max_n": 6, "timeout_s": 10}}
scalars = st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)

text_part = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)})
user = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "developer"]),
                              "content": st.text(min_size=1, max_size=30) | st.lists(text_part, min_size=1, max_size=2)},
                             optional={"name": st.from_regex(r"[a-z]{1,8}", fullmatch=True)})
tool_call = st.fixed_dictionaries({"id": st.just("call_1"), "type": st.just("function"),
                                   "function": st.fixed_dictionaries({"name": st.just("add"),
                                                                      "arguments": st.just('{"a": 1}')})})
assistant = st.fixed_dictionaries({"role": st.just("assistant"), "content": st.none() | st.text(max_size=20)},
                                  optional={"tool_calls": st.lists(tool_call, min_size=1, max_size=1)})
params = {"temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "max_tokens": st.integers(1, 64),
          "seed": st.integers(0, 100), "stop": st.just(["\n\n"]), "user": st.just("u1"),
          "its": st.fixed_dictionaries({"n": st.integers(1, 4)}),
          "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()})}
chat_body = st.fixed_dictionaries(
    {"model": st.sampled_from(["math", "sim"]), "stream": st.booleans(),
     "messages": st.tuples(st.lists(user | assistant, max_size=2), user).map(lambda t: [*t[0], t[1]])},
    optional=params)
completion_body = st.fixed_dictionaries(
    {"model": st.sampled_from(["math", "sim"]), "stream": st.booleans(),
     "prompt": st.text(min_size=1, max_size=30) | st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=2)},
    optional={**{k: v for k, v in params.items() if k != "user"}, "echo": st.booleans(),
              "logprobs": st.integers(0, 5), "best_of": st.integers(1, 3)})


def paths(value: Any, at: tuple = ()) -> list[tuple]:
    """Every place in a JSON value: the root, each key and each list index, recursively."""
    out = [at]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*at, i))
    return out


def deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def mutate(body: Any, path: tuple, action: str, replacement: Any) -> Any:
    if not path:
        return replacement if action != "drop" else {}
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    key, old = path[-1], parent[path[-1]]
    if action == "drop" and isinstance(parent, dict):
        del parent[key]
    elif action == "retype":
        parent[key] = [old] if not isinstance(old, list) else json.dumps(old)
    elif action == "null":
        parent[key] = None
    elif action == "deep":
        parent[key] = deep(replacement)
    else:
        parent[key] = replacement
    return body


@st.composite
def mutated(draw, valid):
    body = copy.deepcopy(draw(valid))  # mutated in place: never touch a strategy's constants
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(body)))
        action = draw(st.sampled_from(["drop", "replace", "retype", "null", "deep"]))
        replacement = draw(st.integers(60, 70)) if action == "deep" else draw(json_values)
        body = mutate(body, path, action, replacement)
    return body


@pytest.fixture(scope="module")
def fuzz(module_servers, sim) -> Proxy:
    return proxy_starter(module_servers)({"routes": [VOTE, PASS_ROUTE]}, sim)


def post(proxy: Proxy, path: str, body: Any) -> tuple[int, list[dict[str, Any]]]:
    """Status, and the error objects the answer carries (the body's, or a stream's error events)."""
    raw = json.dumps(body).encode()
    r = proxy.http.post(path, content=raw, headers={"content-type": "application/json"}, timeout=30)
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        events = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        return r.status_code, [e["error"] for e in events if "error" in e]
    data = r.json()
    return r.status_code, [data["error"]] if r.status_code >= 400 else []


def check(status: int, errors: list[dict[str, Any]]) -> None:
    assert status < 500, errors
    for err in errors:
        assert isinstance(err["message"], str) and err["message"] and {"type", "param", "code"} <= set(err)
        assert err["type"] not in ("api_error", "upstream_error"), err  # a client's mistake is no upstream failure


SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(body=mutated(chat_body))
def test_mutated_chat_bodies_are_answered_2xx_or_4xx(fuzz, body):
    check(*post(fuzz, "/v1/chat/completions", body))


@SETTINGS
@given(body=mutated(completion_body))
def test_mutated_completion_bodies_are_answered_2xx_or_4xx(fuzz, body):
    check(*post(fuzz, "/v1/completions", body))


@pytest.mark.parametrize("model", ["math", "sim"])
@pytest.mark.parametrize("bad, param", [
    ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": {"r": 1}, "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "x"}], "its": {"n": None}}, "its.n"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}]}, "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": "x", "name": 7}]}, "messages[0].name"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [1]}]},
     "messages[1].tool_calls[0]"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"function": "f"}]}]},
     "messages[1].tool_calls[0].function"),
])
def test_known_bad_fields_are_400s_naming_the_field(fuzz, model, bad, param):
    for stream in (False, True):
        r = fuzz.http.post("/v1/chat/completions", json={"model": model, "stream": stream, **bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_json_nested_100k_deep_is_a_400(fuzz):
    body = b'{"model": "sim", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = fuzz.http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_too_deep"
    shallow = {"model": "sim", "messages": [{"role": "user", "content": "[[[[" * 100}], "user": deep(60)}
    assert fuzz.http.post("/v1/chat/completions", json=shallow).status_code == 200  # brackets in strings don't count
