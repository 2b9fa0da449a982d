"""The simulated upstream, over real loopback HTTP (openai SDK and httpx; no mocks)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx
import openai
import pytest

from itsproxy.proxy.metering import tokens
from itsproxy.proxy.simulator import (
    SimConfig,
    add_cli_arguments,
    config_from_args,
    make_server,
    parse_model_options,
    questions,
    truth_of,
)
from itsproxy.proxy.simulator.questions import last_number
from sim_helpers import QS, accuracy, answers, chat, client, fresh, http, sim, user  # noqa: F401 - fixtures

# ---------------------------------------------------------------- answers


def test_questions_helper():
    assert len({q for q, _ in QS}) == 300
    q, truth = QS[5]
    assert truth_of(q) == truth and truth_of("hello") is None
    assert questions(42, 10) == QS[:10]
    assert truth_of("What is 5 + -3?") == 2


def test_same_seed_same_answers(http):
    q = QS[0][0]
    a = chat(http, messages=user(q), n=4, seed=11)
    b = chat(http, messages=user(q), n=4, seed=11)
    assert [c["message"] for c in a["choices"]] == [c["message"] for c in b["choices"]]
    different = sum(
        chat(http, messages=user(q), seed=1)["choices"][0]["message"]
        != chat(http, messages=user(q), seed=2)["choices"][0]["message"]
        for q, _ in QS[:10]
    )
    assert different >= 5
    for c in a["choices"]:  # the last number is the answer; wording varies
        text = c["message"]["content"]
        assert text.endswith(f"The answer is {last_number(text)}.")


def test_accuracy_near_configured_mean(http):
    assert abs(accuracy(http) - 0.65) < 0.08  # uniform in (0.35, 0.95)
    assert accuracy(http, model="sim@easy_share=1", qs=QS[:100]) > 0.85
    assert accuracy(http, model="sim@acc=0.1,0.1", qs=QS[:100]) < 0.25


def test_majority_vote_is_not_trivial(http):
    # wrong samples concentrate on a common wrong answer
    q, truth = QS[0]
    resp = chat(http, messages=user(q), n=64, seed=5, model="sim@acc=0.3,0.3")
    wrong = [a for a in answers(resp) if a != truth]
    top = max(wrong.count(w) for w in set(wrong))
    assert top >= len(wrong) * 0.3


def test_temperature_zero_is_greedy(http):
    for q, _truth in QS[:20]:
        resp = chat(http, messages=user(q), n=3, temperature=0)
        assert len({c["message"]["content"] for c in resp["choices"]}) == 1
    low = chat(http, model="sim@acc=0.2,0.2", messages=user(QS[0][0]), temperature=0)
    assert answers(low)[0] != QS[0][1]
    high = chat(http, model="sim@acc=0.9,0.9", messages=user(QS[0][0]), temperature=0)
    assert answers(high)[0] == QS[0][1]


def test_no_question_and_json_mode(http):
    resp = chat(http, messages=user("Tell me a joke."))
    assert resp["choices"][0]["message"]["content"] == "I can only add numbers."
    assert resp["usage"]["completion_tokens"] > 0
    q, _ = QS[1]
    resp = chat(http, messages=user(q), response_format={"type": "json_object"}, n=3, seed=1)
    for c in resp["choices"]:
        assert set(json.loads(c["message"]["content"])) == {"answer"}


def test_last_user_question_wins(http):
    msgs = [{"role": "user", "content": "What is 1 + 1?"}, {"role": "user", "content": "What is 100 + 200?"}]
    resp = chat(http, messages=msgs, model="sim@acc=0.99,0.99", temperature=0)
    assert answers(resp) == [300]


def test_n_no_n_and_max_n(http, client):
    q = QS[2][0]
    assert len(chat(http, messages=user(q), n=5)["choices"]) == 5
    r = http.post("/v1/chat/completions", json={"model": "sim@no_n", "messages": user(q), "n": 2})
    assert r.status_code == 400
    assert r.json() == {"error": {"message": "n > 1 is not supported by this model",
                                  "type": "invalid_request_error", "param": "n",
                                  "code": "unsupported_parameter"}}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="sim@no_n", messages=user(q), n=3)
    assert len(chat(http, model="sim@no_n", messages=user(q))["choices"]) == 1
    resp = chat(http, model="sim@max_n=2", messages=user(q), n=5)
    assert [c["index"] for c in resp["choices"]] == [0, 1]


# ---------------------------------------------------------------- usage and stats


def test_usage_equals_token_counts_and_stats_add_up(fresh):
    with httpx.Client(base_url=fresh.url) as http:
        tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
        bodies = [
            {"messages": user(QS[0][0])},
            {"messages": [{"role": "system", "content": "Think step by step."}] + user(QS[1][0]), "n": 3},
            {"messages": user(QS[2][0]), "tools": tools},
            {"messages": user("hi"), "n": 2, "logprobs": True, "top_logprobs": 2},
        ]
        want_p = want_c = 0
        for body in bodies:
            resp = chat(http, **body)
            p = tokens.count_messages(body["messages"], body.get("tools"))
            c = sum(tokens.count_message(ch["message"]) for ch in resp["choices"])
            assert resp["usage"] == {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
            want_p, want_c = want_p + p, want_c + c
        stream_usage = None
        with http.stream("POST", "/v1/chat/completions", json={
                "model": "sim@stream_delay_ms=0", "messages": user(QS[3][0]), "n": 2, "stream": True,
                "stream_options": {"include_usage": True}}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and '"usage": {' in line:
                    stream_usage = json.loads(line[6:])["usage"]
        want_p += stream_usage["prompt_tokens"]
        want_c += stream_usage["completion_tokens"]
        assert http.post("/v1/chat/completions", json={"model": "sim@bogus", "messages": user("x")}).status_code == 400
        s = http.get("/stats").json()
        assert (s["requests"], s["errors"], s["streams"]) == (6, 1, 1)
        assert s["choices"] == 1 + 3 + 1 + 2 + 2
        assert (s["prompt_tokens"], s["completion_tokens"]) == (want_p, want_c)
        assert s["total_tokens"] == want_p + want_c
        assert s["by_model"]["sim"]["requests"] == 4
        assert s["by_model"]["sim@stream_delay_ms=0"]["completion_tokens"] == stream_usage["completion_tokens"]
        assert http.post("/stats/reset").json()["requests"] == 0


def test_no_usage(http, client):
    resp = chat(http, model="sim@no_usage", messages=user(QS[0][0]))
    assert "usage" not in resp
    chunks = list(client.chat.completions.create(model="sim@no_usage", messages=user(QS[0][0]), stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(ch.usage is None for ch in chunks)


# ---------------------------------------------------------------- streaming


def test_stream_with_the_sdk(client, http):
    q = QS[4][0]
    stream = client.chat.completions.create(model="sim", messages=user(q), n=2, seed=9, stream=True,
                                            stream_options={"include_usage": True})
    texts, finish, usage = {0: "", 1: ""}, {}, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            texts[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    plain = chat(http, messages=user(q), n=2, seed=9)
    assert [texts[0], texts[1]] == [c["message"]["content"] for c in plain["choices"]]
    assert finish == {0: "stop", 1: "stop"}
    assert usage.completion_tokens == plain["usage"]["completion_tokens"]
    assert usage.prompt_tokens == plain["usage"]["prompt_tokens"]


def test_stream_closed_early_is_counted_cancelled(fresh):
    with httpx.Client(base_url=fresh.url) as http:
        body = {"model": "sim@stream_delay_ms=40", "messages": user(QS[5][0]), "stream": True, "n": 2}
        got = 0
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    got += 1
                    if got == 3:
                        break
        deadline = time.monotonic() + 3
        while (s := http.get("/stats").json())["streams_cancelled"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert s["streams"] == 1 and s["streams_cancelled"] == 1
        sent = s["completion_tokens_sent_cancelled"]
        assert 0 < sent < 30 and s["completion_tokens"] == sent
        assert s["prompt_tokens"] == tokens.count_messages(body["messages"])


# ---------------------------------------------------------------- tools and logprobs


def test_tool_calls(client, http):
    a_q, truth = QS[6]
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "submit", "parameters": {"type": "object"}}}]
    resp = chat(http, messages=user(a_q), tools=tools, n=2, seed=1)
    for c in resp["choices"]:
        assert c["finish_reason"] == "tool_calls" and c["message"]["content"] is None
        call = c["message"]["tool_calls"][0]
        assert call["id"].startswith("call_") and call["function"]["name"] == "add"
        args = json.loads(call["function"]["arguments"])
        assert list(args) == ["a", "answer", "b"] and args["a"] + args["b"] == truth
    named = chat(http, messages=user(a_q), tools=tools,
                 tool_choice={"type": "function", "function": {"name": "submit"}})
    assert named["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "submit"
    none = chat(http, messages=user(a_q), tools=tools, tool_choice="none")
    assert none["choices"][0]["message"]["content"]
    call = resp["choices"][0]["message"]
    after = user(a_q) + [call, {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "ok"}]
    assert chat(http, messages=after, tools=tools)["choices"][0]["finish_reason"] == "stop"
    stream = client.chat.completions.create(model="sim", messages=user(a_q), tools=tools, seed=1, stream=True)
    args, name, reason = "", None, None
    for chunk in stream:
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                name = tc.function.name or name
                args += tc.function.arguments or ""
            reason = ch.finish_reason or reason
    assert (name, reason) == ("add", "tool_calls")
    assert args == resp["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]


def test_logprobs(client):
    resp = client.chat.completions.create(model="sim", messages=user(QS[7][0]), logprobs=True, top_logprobs=3)
    content = resp.choices[0].logprobs.content
    assert "".join(t.token for t in content) == resp.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in content)


# ---------------------------------------------------------------- faults, options, control


def test_faults(client, http):
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="sim@fail_rate=1", messages=user(QS[0][0]))
    r = http.post("/v1/chat/completions", json={"model": "sim@fail_rate=1@fail_status=429", "messages": user("x")})
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    t = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json={"model": "sim@hang", "messages": user("x")}, timeout=0.3)
    assert time.monotonic() - t < 2
    t = time.monotonic()
    chat(http, model="sim@latency_ms=150", messages=user("x"))
    assert time.monotonic() - t >= 0.15


def test_model_options(http):
    base, opts = parse_model_options("openai/sim@no_n@latency_ms=200@acc=0.9,0.99@max_n=2@judge_tpr=0.7")
    assert base == "sim"
    assert opts == {"no_n": True, "latency_ms": 200.0, "accuracy": (0.9, 0.99), "max_n": 2, "judge_tpr": 0.7}
    r = http.post("/v1/chat/completions", json={"model": "sim@frobnicate=3", "messages": user("x")})
    assert r.status_code == 400 and "frobnicate" in r.json()["error"]["message"]
    r = http.post("/v1/chat/completions", json={"model": "sim@fail_rate=2", "messages": user("x")})
    assert r.status_code == 400
    assert http.get("/v1/models").json()["data"][0]["id"] == "sim"
    assert http.get("/health").json() == {"status": "ok"}


def test_control(fresh):
    with httpx.Client(base_url=fresh.url) as http:
        body = {"model": "sim", "messages": user(QS[0][0]), "n": 2}
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        cfg = http.post("/control", json={"no_n": True}).json()
        assert cfg["no_n"] is True and cfg["seed"] == 3
        assert http.post("/v1/chat/completions", json=body).status_code == 400
        assert http.post("/control", json={"nope": 1}).status_code == 400
        http.post("/control", json={"no_n": False, "accuracy": [0.99, 0.99]})
        assert http.post("/v1/chat/completions", json=body).status_code == 200


def test_make_server_inside_a_running_loop():
    async def main():
        server = make_server(SimConfig(seed=1))
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            resps = await asyncio.gather(*[
                http.post("/v1/chat/completions", json={"model": "sim", "messages": user(q), "seed": 1})
                for q, _ in QS[:20]])
        server.should_exit = True
        await task
        return resps

    assert all(r.status_code == 200 for r in asyncio.run(main()))


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args(["--port", "0", "--seed", "5", "--accuracy", "0.5,0.9", "--easy-share", "0.7",
                              "--no-n", "--fail-rate", "0.1", "--boost", "think hard=0.2", "--max-n", "3"])
    cfg = config_from_args(args)
    assert (args.host, args.port) == ("127.0.0.1", 0)
    assert (cfg.seed, cfg.accuracy, cfg.easy_share, cfg.no_n, cfg.fail_rate, cfg.max_n) == (
        5, (0.5, 0.9), 0.7, True, 0.1, 3)
    assert cfg.boosts == {"think hard": 0.2}
    assert config_from_args(parser.parse_args([])) == SimConfig()
