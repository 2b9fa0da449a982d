"""Every error is an OpenAI-shaped body with a deliberate status; the server stays up."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from conftest import KEY, VOTE_ROUTE

MSG = [{"role": "user", "content": "What is 1 + 2?"}]


def error_of(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code
    assert KEY not in r.text
    return err


def post(proxy, body, **kw):
    return proxy.http.post("/v1/chat/completions", **kw, **({"json": body} if not isinstance(body, bytes) else {"content": body}))


def test_invalid_json(proxy):
    err = error_of(post(proxy, b"{not json", headers={"content-type": "application/json"}), 400, "invalid_json")
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", [{"model": "math"}, {"model": "math", "messages": []},
                                  {"model": "math", "messages": "hi"}, {"model": "math", "messages": [{"content": "x"}]},
                                  [1, 2], {"messages": MSG}])
def test_missing_or_bad_messages(proxy, body):
    error_of(post(proxy, body), 400)


@pytest.mark.parametrize("key,value", [("temperature", 7), ("n", 0), ("stream", "yes"), ("max_tokens", -1),
                                       ("seed", "abc"), ("tools", "x")])
def test_bad_parameter_types(proxy, key, value):
    err = error_of(post(proxy, {"model": "math", "messages": MSG, key: value}), 400)
    assert err["param"] == key


def test_glob_route_catches_other_names(proxy):
    r = post(proxy, {"model": "nope", "messages": MSG})
    assert r.status_code == 200 and r.headers["x-its-route"] == "pass"


def test_unknown_model_404(make_proxy, sim):
    p = make_proxy({"routes": [VOTE_ROUTE]}, sim)
    with pytest.raises(openai.NotFoundError) as exc:
        p.client.chat.completions.create(model="nope", messages=MSG)
    assert exc.value.body["code"] == "model_not_found"


def test_body_too_large(proxy):
    big = {"model": "math", "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    error_of(post(proxy, big), 413, "body_too_large")


@pytest.mark.parametrize("key", ["api_base", "base_url", "api_key", "extra_headers", "custom_llm_provider",
                                 "mock_response", "API_BASE", "Extra_Headers"])
def test_forbidden_parameters(proxy, key):
    err = error_of(post(proxy, {"model": "sim", "messages": MSG, key: "http://evil.example"}), 400,
                   "forbidden_parameter")
    assert err["param"] == key


def test_its_n_above_limit(proxy):
    err = error_of(post(proxy, {"model": "math", "messages": MSG, "its": {"n": 13}}), 400, "n_above_limit")
    assert err["param"] == "its.n"


def test_upstream_rejection_passes_status_and_message(make_proxy, fresh_sim):
    # The simulator rejects unknown model options with a 400: the client sees that status and message.
    p2 = make_proxy({"model_list": [{"model_name": "odd", "litellm_params": {
        "model": "openai/sim@bogus_option", "api_base": f"{fresh_sim.url}/v1", "api_key": KEY}}],
        "routes": [{**VOTE_ROUTE, "generate": {"model": "odd", "n": 3}}]}, fresh_sim)
    for client_proxy, model in ((p2, "math"), (p2, "odd")):
        r = post(client_proxy, {"model": model, "messages": MSG})
        err = error_of(r, 400)
        assert "bogus_option" in err["message"]
        assert r.headers["x-should-retry"] == "false"


def test_all_candidates_failing_is_502(make_proxy, fresh_sim):
    route = {**VOTE_ROUTE, "generate": {"model": "sim-broken", "n": 3}}
    p = make_proxy({"routes": [route]}, fresh_sim)
    r = post(p, {"model": "math", "messages": MSG})
    error_of(r, 502, "upstream_error")
    assert r.headers["x-should-retry"] == "false"  # a retry would re-spend every sample


def test_unreachable_upstream_is_502(make_proxy, sim):
    models = [{"model_name": "gone", "litellm_params": {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1",
                                                         "api_key": KEY}}]
    p = make_proxy({"model_list": models, "routes": [{**VOTE_ROUTE, "generate": {"model": "gone", "n": 2}}]}, sim)
    error_of(post(p, {"model": "math", "messages": MSG}), 502)
    error_of(post(p, {"model": "gone", "messages": MSG}), 502)


def test_deadline_is_504_and_cancels_upstream(make_proxy, fresh_sim):
    route = {**VOTE_ROUTE, "generate": {"model": "sim-hang", "n": 2}, "limits": {"timeout_s": 0.5}}
    p = make_proxy({"routes": [route]}, fresh_sim)
    started = time.monotonic()
    error_of(post(p, {"model": "math", "messages": MSG}), 504, "deadline_exceeded")
    assert time.monotonic() - started < 5
    _wait_for(lambda: p.sim_stats()["errors"] >= 1)  # the hanging upstream call saw its connection close


def test_client_disconnect_cancels_upstream_work(make_proxy, fresh_sim):
    route = {**VOTE_ROUTE, "generate": {"model": "sim-hang", "n": 2}}
    p = make_proxy({"routes": [route]}, fresh_sim)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{p.url}/v1/chat/completions", json={"model": "math", "messages": MSG}, timeout=0.5)
    _wait_for(lambda: p.sim_stats()["errors"] >= 1)
    assert p.http.get("/health").status_code == 200


def test_unknown_endpoint_and_method(proxy):
    error_of(proxy.http.get("/v1/nothing"), 404)
    error_of(proxy.http.get("/v1/chat/completions"), 405)


def _wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_secrets_never_in_logs_errors_or_metrics(make_proxy, fresh_sim, caplog):
    caplog.set_level("DEBUG")
    models = [{"model_name": "gone", "litellm_params": {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1",
                                                         "api_key": KEY}},
              {"model_name": "odd", "litellm_params": {"model": "openai/sim@bogus", "api_base": f"{fresh_sim.url}/v1",
                                                        "api_key": KEY}}]
    for client in ("auto", "litellm"):
        p = make_proxy({"model_list": models, "routes": [], "server": {"upstream_client": client}}, fresh_sim)
        for model in ("gone", "odd"):
            r = post(p, {"model": model, "messages": MSG})
            assert r.status_code >= 400 and KEY not in r.text
        assert KEY not in p.http.get("/metrics").text
        assert KEY not in p.http.get("/v1/its/stats").text
    assert KEY not in caplog.text
