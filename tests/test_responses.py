"""POST /v1/responses through the official openai SDK: the same routes as chat (passthrough and a vote
route on the simulator), and the translation both ways checked against a scripted upstream that
records what it was sent."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from conftest import PASS_ROUTE, VOTE_ROUTE, sim_models
from itsproxy.proxy.serving import embedded_config, serve_in_thread

Q = "What is 17 + 25?"
TOOLS = [{"type": "function", "name": "add", "description": "Add two numbers", "strict": False,
          "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}]
CALLS = [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a":17,"b":25}'}},
         {"id": "call_2", "type": "function", "function": {"name": "mul", "arguments": '{"a":2,"b":3}'}}]
USAGE = {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
         "prompt_tokens_details": {"cached_tokens": 8}, "completion_tokens_details": {"reasoning_tokens": 4}}


# -- a scripted upstream: the model name picks the reply; every request body is kept -------------

REPLIES: dict[str, tuple[dict[str, Any], str]] = {
    "ok": ({"role": "assistant", "content": "The answer is 42."}, "stop"),
    "length": ({"role": "assistant", "content": "The answer is"}, "length"),
    "mixed": ({"role": "assistant", "content": "Let me add.", "tool_calls": CALLS}, "tool_calls"),
    "refusal": ({"role": "assistant", "content": None, "refusal": "I can't help with that."}, "stop"),
}


def stream_chunks(message: dict[str, Any], finish: str) -> list[dict[str, Any]]:
    def chunk(delta, fin=None):
        return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "scripted",
                "choices": [{"index": 0, "delta": delta, "finish_reason": fin}]}
    out = [chunk({"role": "assistant", "content": ""})]
    text = message.get("content") or ""
    out += [chunk({"content": text[i:i + 4]}) for i in range(0, len(text), 4)]
    if message.get("refusal"):
        out.append(chunk({"refusal": message["refusal"]}))
    for i, call in enumerate(message.get("tool_calls") or []):
        args = call["function"]["arguments"]
        out.append(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                          "function": {"name": call["function"]["name"], "arguments": ""}}]}))
        out += [chunk({"tool_calls": [{"index": i, "function": {"arguments": args[j:j + 5]}}]})
                for j in range(0, len(args), 5)]
    out.append(chunk({}, finish))
    out.append({**chunk({}), "choices": [], "usage": USAGE})
    return out


class Scripted:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.bodies.append(body)
        message, finish = REPLIES[body["model"]]
        if body.get("stream"):
            lines = [f"data: {json.dumps(c)}\n\n" for c in stream_chunks(message, finish)] + ["data: [DONE]\n\n"]
            return StreamingResponse(iter(lines), media_type="text/event-stream")
        return JSONResponse({"id": "c", "object": "chat.completion", "created": 1, "model": "scripted",
                             "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                             "usage": USAGE})


@pytest.fixture(scope="module")
def scripted():
    state = Scripted()
    handle = serve_in_thread(embedded_config(Starlette(routes=[Route("/v1/chat/completions", state.chat,
                                                                     methods=["POST"])])))
    yield handle, state
    handle.stop()


@pytest.fixture
def sp(make_proxy, sim, scripted):
    """A proxy whose passthrough models are the scripted upstream's replies, beside the simulator's."""
    url = scripted[0].url
    models = sim_models(sim.url) + [{"model_name": m, "litellm_params": {"model": f"openai/{m}",
                                                                          "api_base": f"{url}/v1", "api_key": "k"}}
                                    for m in REPLIES]
    p = make_proxy({"model_list": models, "routes": [VOTE_ROUTE, PASS_ROUTE]}, sim)
    p.upstream_bodies = scripted[1].bodies
    p.upstream_bodies.clear()
    return p


# -- the simulator: passthrough and a vote route --------------------------------------------------

def test_passthrough_string_input(proxy):
    raw = proxy.client.responses.with_raw_response.create(model="sim", input=Q, temperature=0)  # greedy: right
    r = raw.parse()
    assert raw.headers["x-its-candidates"] == "1" and raw.headers["x-its-cost-usd"]
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert "42" in r.output_text
    msg = r.output[0]
    assert msg.type == "message" and msg.role == "assistant" and msg.status == "completed"
    assert msg.content[0].type == "output_text" and msg.content[0].annotations == []
    its = r.model_extra["its"]
    assert its["strategy"] == "passthrough" and its["route"] == raw.headers["x-its-route"]
    total = its["usage"]["total"]
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == \
        (total["prompt_tokens"], total["completion_tokens"], total["total_tokens"]) and r.usage.total_tokens > 0
    assert r.tool_choice == "auto" and r.tools == [] and r.parallel_tool_calls is True


def test_vote_route_async_items_and_instructions(proxy):
    async def go():
        async with openai.AsyncOpenAI(base_url=proxy.handle.base_url, api_key="none", max_retries=0) as client:
            return await client.responses.create(
                model="math", instructions="Answer with a number.",
                input=[{"role": "user", "content": [{"type": "input_text", "text": Q}]}])
    r = asyncio.run(go())
    its = r.model_extra["its"]
    assert its["strategy"] == "vote" and its["candidates"] == 9
    assert its["evidence"][its["selected"]]["answer"] in r.output_text
    assert r.instructions == "Answer with a number."
    assert r.usage.total_tokens == its["usage"]["total"]["total_tokens"]  # usage_report: total
    assert r.usage.output_tokens > its["usage"]["selected"]["completion_tokens"] > 0


def test_vote_route_its_n(proxy):
    r = proxy.client.responses.create(model="math", input=Q, extra_body={"its": {"n": 3}})
    assert r.model_extra["its"]["candidates"] == 3


def test_function_tool_round_trip(proxy):
    first = proxy.client.responses.create(model="sim", input=Q, tools=TOOLS)
    call = first.output[0]
    assert call.type == "function_call" and call.name == "add" and call.status == "completed"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert json.loads(call.arguments)["a"] == 17
    assert first.tools[0].name == "add"  # echoed as the client declared it
    history = [{"role": "user", "content": Q}, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "42"}]
    second = proxy.client.responses.create(model="sim", input=history, tools=TOOLS, temperature=0)
    assert second.output[0].type == "message" and "42" in second.output_text


class Answer(BaseModel):
    answer: int


def test_text_format_json_schema_parses(proxy):
    r = proxy.client.responses.parse(model="sim", input=Q, text_format=Answer)
    assert isinstance(r.output_parsed, Answer) and json.loads(r.output_text) == r.output_parsed.model_dump()
    assert r.text.format.type == "json_schema" and r.text.format.name == "Answer"


# -- the translation, against the scripted upstream -----------------------------------------------

def test_request_translation_to_chat(sp):
    sp.client.responses.create(
        model="ok", instructions="Be brief.", max_output_tokens=50, temperature=0.2, top_p=0.9, user="u1",
        reasoning={"effort": "low"}, tools=TOOLS, tool_choice={"type": "function", "name": "add"},
        parallel_tool_calls=False, metadata={"k": "v"}, store=False, prompt_cache_key="pk",
        text={"format": {"type": "json_schema", "name": "A", "schema": {"type": "object"}, "strict": True}},
        input=[{"type": "message", "role": "developer", "content": "Use tools."},
               {"role": "user", "content": [{"type": "input_text", "text": "Look: "},
                                            {"type": "input_image", "image_url": "data:image/png;base64,AA",
                                             "detail": "low"}]},
               {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
                "content": [{"type": "output_text", "text": "Adding.", "annotations": []}]},
               {"type": "function_call", "call_id": "call_a", "name": "add", "arguments": "{}"},
               {"type": "function_call", "call_id": "call_b", "name": "add", "arguments": "{\"a\":1}"},
               {"type": "function_call_output", "call_id": "call_a", "output": "1"},
               {"type": "function_call_output", "call_id": "call_b",
                "output": [{"type": "input_text", "text": "2"}]}])
    body = sp.upstream_bodies[-1]
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "text", "text": "Look: "},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA",
                                                                         "detail": "low"}}]},
        {"role": "assistant", "content": "Adding.", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "add", "arguments": "{}"}},
            {"id": "call_b", "type": "function", "function": {"name": "add", "arguments": "{\"a\":1}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "1"},
        {"role": "tool", "tool_call_id": "call_b", "content": "2"}]
    assert body["max_tokens"] == 50 and body["temperature"] == 0.2 and body["top_p"] == 0.9
    assert body["user"] == "u1" and body["reasoning_effort"] == "low" and body["prompt_cache_key"] == "pk"
    assert body["tools"] == [{"type": "function", "function": {
        "name": "add", "description": "Add two numbers", "strict": False, "parameters": TOOLS[0]["parameters"]}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "A", "schema": {"type": "object"}, "strict": True}}
    for absent in ("metadata", "store", "input", "instructions", "max_output_tokens", "text", "reasoning", "n"):
        assert absent not in body


def test_output_translation_text_and_calls(sp):
    r = sp.client.responses.create(model="mixed", input="hi")
    kinds = [item.type for item in r.output]
    assert kinds == ["message", "function_call", "function_call"]
    assert r.output_text == "Let me add."
    assert [(c.call_id, c.name, c.arguments) for c in r.output[1:]] == \
        [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in CALLS]
    assert len({item.id for item in r.output}) == 3


def test_usage_details_and_length_is_incomplete(sp):
    r = sp.client.responses.create(model="length", input="hi", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete" and r.max_output_tokens == 3
    u = r.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (30, 12, 42)
    assert u.input_tokens_details.cached_tokens == 8 and u.output_tokens_details.reasoning_tokens == 4


def test_refusal_is_a_refusal_part(sp):
    r = sp.client.responses.create(model="refusal", input="hi")
    assert r.output[0].content[0].type == "refusal"
    assert r.output[0].content[0].refusal == "I can't help with that."


def test_json_object_and_text_formats(sp):
    sp.client.responses.create(model="ok", input="hi", text={"format": {"type": "json_object"}})
    assert sp.upstream_bodies[-1]["response_format"] == {"type": "json_object"}
    r = sp.client.responses.create(model="ok", input="hi", text={"format": {"type": "text"}, "verbosity": "low"})
    assert "response_format" not in sp.upstream_bodies[-1] and sp.upstream_bodies[-1]["verbosity"] == "low"
    assert r.text.format.type == "text"


def test_logprobs_when_included(proxy):
    r = proxy.client.responses.create(model="sim", input=Q, include=["message.output_text.logprobs"],
                                      top_logprobs=2)
    logprobs = r.output[0].content[0].logprobs
    assert logprobs and "".join(lp.token for lp in logprobs) == r.output_text
    assert len(logprobs[0].top_logprobs) == 2
    plain = proxy.client.responses.create(model="sim", input=Q)
    assert plain.output[0].content[0].logprobs == []


def test_short_path_is_mounted(proxy):
    r = proxy.http.post("/responses", json={"model": "sim", "input": Q})
    assert r.status_code == 200 and r.json()["object"] == "response"
