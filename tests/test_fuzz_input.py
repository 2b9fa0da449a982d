"""Random request bodies never crash the proxy: always an OpenAI-shaped answer, never a 500."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PASS_ROUTE, VOTE_ROUTE, Proxy, sim_models
from itsproxy.proxy.config import parse_config
from itsproxy.proxy.http.app import create_app
from itsproxy.proxy.serving import embedded_config, serve_in_thread

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
KEYS = ["model", "messages", "stream", "n", "temperature", "top_p", "max_tokens", "seed", "stop", "tools",
        "tool_choice", "response_format", "logprobs", "top_logprobs", "its", "stream_options", "user", "api_base"]
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "bogus"]),
                                 "content": st.one_of(st.text(max_size=30), json_values)})
body = st.fixed_dictionaries(
    {"model": st.sampled_from(["math", "sim", "other", "", 7]),
     "messages": st.one_of(st.lists(message, max_size=3), json_values)},
    optional={k: json_values for k in KEYS if k not in ("model", "messages")})


@pytest.fixture(scope="module")
def fuzz_proxy(sim):
    app = create_app(parse_config({"model_list": sim_models(sim.url),
                                   "routes": [{**VOTE_ROUTE, "limits": {"timeout_s": 5}}, PASS_ROUTE]}))
    p = Proxy(serve_in_thread(embedded_config(app)), sim)
    yield p
    p.stop()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(payload=st.one_of(body, json_values))
def test_random_bodies_get_openai_shaped_answers(fuzz_proxy, payload):
    r = fuzz_proxy.http.post("/v1/chat/completions", json=payload, timeout=15)
    assert r.status_code != 500, r.text
    if r.status_code >= 400:
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["message"]
        assert {"type", "param", "code"} <= set(err)


@pytest.mark.parametrize("raw", [b'{"model": "sim", "messages": [], "temperature": NaN}',
                                 b'{"model": "sim", "messages": [{"role": "user", "content": "x"}], "user": Infinity}'])
def test_non_json_constants_are_rejected(fuzz_proxy, raw):
    r = fuzz_proxy.http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
