"""Streaming on scaling routes: the SDK consumes it whole; figures ride on the last chunk."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from conftest import VOTE_ROUTE

MSG = [{"role": "user", "content": "What is 12 + 30?"}]


def test_scaling_stream_sdk_consumes_it(proxy):
    before = proxy.sim_stats()
    chunks = list(proxy.client.chat.completions.create(model="math", messages=MSG, stream=True, seed=4,
                                                       stream_options={"include_usage": True}))
    after = proxy.sim_stats()
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert usage.total_tokens == after["total_tokens"] - before["total_tokens"]
    its = chunks[-1].model_extra["its"]
    assert its["candidates"] == 9
    assert its["evidence"][its["selected"]]["answer"] in text
    # the same request non-streamed selects the same answer
    r = proxy.client.chat.completions.create(model="math", messages=MSG, seed=4)
    assert r.choices[0].message.content == text


def test_stream_headers_and_no_usage_chunk_unless_asked(proxy):
    with proxy.client.chat.completions.with_streaming_response.create(model="math", messages=MSG, stream=True) as r:
        assert r.headers["x-its-route"] == "vote"
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks = list(r.parse())
    assert all(c.usage is None for c in chunks)
    assert "its" in chunks[-1].model_extra


def test_keepalive_comments_while_working(make_proxy, fresh_sim):
    route = {**VOTE_ROUTE, "generate": {"model": "sim-slow", "n": 2}}
    p = make_proxy({"routes": [route], "server": {"keepalive_s": 0.1}}, fresh_sim)
    with httpx.stream("POST", f"{p.url}/v1/chat/completions", json={"model": "math", "messages": MSG,
                                                                    "stream": True}) as r:
        lines = list(r.iter_lines())
    assert any(line.startswith(":") for line in lines)
    assert lines[-2 if lines[-1] == "" else -1] == "data: [DONE]"


def test_error_after_stream_opened_is_an_error_event(make_proxy, fresh_sim):
    route = {**VOTE_ROUTE, "generate": {"model": "sim-broken", "n": 2}}
    p = make_proxy({"routes": [route]}, fresh_sim)
    with pytest.raises(openai.APIError) as exc:
        list(p.client.chat.completions.create(model="math", messages=MSG, stream=True))
    assert "upstream" in str(exc.value)
    with httpx.stream("POST", f"{p.url}/v1/chat/completions", json={"model": "math", "messages": MSG,
                                                                    "stream": True}) as r:
        data = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert data[-1]["error"]["code"] == "upstream_error"


def test_stream_validation_errors_are_plain_http_errors(proxy):
    r = proxy.http.post("/v1/chat/completions", json={"model": "math", "messages": MSG, "stream": True,
                                                      "its": {"n": 99}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "n_above_limit"


def test_passthrough_stream_upstream_error_before_first_chunk(make_proxy, fresh_sim):
    p = make_proxy({"routes": []}, fresh_sim)
    r = p.http.post("/v1/chat/completions", json={"model": "sim-broken", "messages": MSG, "stream": True})
    assert r.status_code == 502
