"""/v1/responses streams through the SDK's `client.responses.stream(...)`: the documented event order,
`sequence_number` on every event, `response.completed` carrying the metered usage and `its`, and
`response.failed` when the upstream breaks after the stream opened."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from conftest import VOTE_ROUTE
from tests.difficult_upstream import serve as serve_difficult
from tests.test_responses import (  # noqa: F401  (sp is a fixture)
    CALLS,
    TOOLS,
    Q,
    scripted,  # noqa: F401
    sp,
)

TEXT_ITEM = ["response.output_item.added", "response.content_part.added", "response.output_text.delta",
             "response.output_text.done", "response.content_part.done", "response.output_item.done"]


def squeeze(types: list[str]) -> list[str]:
    """Event types with runs of the same delta event folded into one."""
    out: list[str] = []
    for t in types:
        if not (out and out[-1] == t and t.endswith(".delta")):
            out.append(t)
    return out


def run_stream(client, **kwargs):
    with client.responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    return events, final


def check_lifecycle(events, final) -> None:
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.id == final.id and events[0].response.status == "in_progress"
    done = [e for e in events if e.type == "response.output_text.done"]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "".join(e.text for e in done) == final.output_text


def test_passthrough_stream_event_order_and_usage(proxy):
    events, final = run_stream(proxy.client, model="sim", input=Q, temperature=0)
    assert squeeze([e.type for e in events]) == ["response.created", "response.in_progress", *TEXT_ITEM,
                                                 "response.completed"]
    assert sum(e.type == "response.output_text.delta" for e in events) > 1  # relayed live, in pieces
    check_lifecycle(events, final)
    its = final.model_extra["its"]
    assert its["strategy"] == "passthrough" and "42" in final.output_text
    total = its["usage"]["total"]
    assert (final.usage.input_tokens, final.usage.output_tokens) == \
        (total["prompt_tokens"], total["completion_tokens"]) and final.usage.output_tokens > 0
    assert final.status == "completed" and final.output[0].status == "completed"


def test_vote_route_stream_sends_the_winner(proxy):
    events, final = run_stream(proxy.client, model="math", input=Q)
    assert squeeze([e.type for e in events]) == ["response.created", "response.in_progress", *TEXT_ITEM,
                                                 "response.completed"]
    check_lifecycle(events, final)
    its = final.model_extra["its"]
    assert its["strategy"] == "vote" and its["candidates"] == 9
    assert final.usage.total_tokens == its["usage"]["total"]["total_tokens"]
    assert its["evidence"][its["selected"]]["answer"] in final.output_text


def test_function_call_stream(proxy):
    events, final = run_stream(proxy.client, model="sim", input=Q, tools=TOOLS)
    assert squeeze([e.type for e in events]) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    call = final.output[0]
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert call.type == "function_call" and call.name == "add" and call.arguments == args
    assert json.loads(args)["b"] == 25


def test_text_then_two_calls_stream(sp):  # noqa: F811
    events, final = run_stream(sp.client, model="mixed", input="hi")
    types = squeeze([e.type for e in events])
    call_item = ["response.output_item.added", "response.function_call_arguments.delta"]
    assert types == ["response.created", "response.in_progress", *TEXT_ITEM, *call_item, *call_item,
                     "response.function_call_arguments.done", "response.output_item.done",
                     "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert [(c.call_id, c.arguments) for c in final.output[1:]] == \
        [(c["id"], c["function"]["arguments"]) for c in CALLS]
    assert final.output_text == "Let me add."


def test_length_stream_ends_incomplete(sp):  # noqa: F811
    with sp.client.responses.stream(model="length", input="hi") as stream:
        events = list(stream)
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.usage.output_tokens == 12 and last.response.model_extra["its"]


def test_async_stream(proxy):
    async def go():
        async with openai.AsyncOpenAI(base_url=proxy.handle.base_url, api_key="none", max_retries=0) as client:
            async with client.responses.stream(model="math", input=Q) as stream:
                types = [e.type async for e in stream]
                return types, await stream.get_final_response()
    types, final = asyncio.run(go())
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert final.model_extra["its"]["candidates"] == 9


def test_raw_sse_names_every_event(proxy):
    with httpx.stream("POST", f"{proxy.url}/v1/responses", json={"model": "sim", "input": Q, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert names == [d["type"] for d in data] and len(data) > 5
    assert "[DONE]" not in "".join(lines)


# -- failures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def difficult():
    handle, state = serve_difficult()
    yield handle
    handle.stop()


def test_upstream_cut_mid_stream_is_response_failed(make_proxy, sim, difficult):
    models = [{"model_name": "truncated", "litellm_params": {"model": "openai/truncated",
                                                             "api_base": f"{difficult.url}/v1", "api_key": "k"}}]
    p = make_proxy({"model_list": models, "routes": []}, sim)
    with p.client.responses.stream(model="truncated", input=Q) as stream:
        events = list(stream)
        with pytest.raises(RuntimeError):
            stream.get_final_response()
    last = events[-1]
    assert last.type == "response.failed" and last.response.status == "failed"
    assert last.response.error.code == "server_error" and "upstream" in last.response.error.message
    assert "answer" in last.response.output[0].content[0].text  # the output as far as it got
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_scaling_route_failure_is_response_failed(make_proxy, fresh_sim):
    p = make_proxy({"routes": [{**VOTE_ROUTE, "generate": {"model": "sim-broken", "n": 2}}]}, fresh_sim)
    with p.client.responses.stream(model="math", input=Q) as stream:
        events = list(stream)
    assert [e.type for e in events] == ["response.created", "response.in_progress", "response.failed"]
    err = events[-1].response.model_extra["its"]["error"]
    assert err["code"] == "upstream_error" and err["status"] == 502


def test_upstream_refusing_before_the_stream_is_an_http_error(make_proxy, fresh_sim):
    p = make_proxy({"routes": []}, fresh_sim)
    with pytest.raises(openai.APIStatusError) as exc:
        with p.client.responses.stream(model="sim-broken", input=Q) as stream:
            list(stream)
    assert exc.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as exc:
        p.client.responses.create(model="sim-broken", input=Q)
    assert exc.value.status_code == 502 and exc.value.body["code"] == "upstream_error"


def test_keepalives_while_a_slow_route_works(make_proxy, fresh_sim):
    route = {**VOTE_ROUTE, "generate": {"model": "sim-slow", "n": 2}}
    p = make_proxy({"routes": [route], "server": {"keepalive_s": 0.1}}, fresh_sim)
    with httpx.stream("POST", f"{p.url}/v1/responses", json={"model": "math", "input": Q, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    first_comment = next(i for i, line in enumerate(lines) if line.startswith(":"))
    assert '"response.in_progress"' in lines[first_comment - 1]  # the opening events went out first
    events, final = run_stream(p.client, model="math", input=Q)  # the SDK skips the comments
    assert final.model_extra["its"]["candidates"] == 2 and events[-1].type == "response.completed"
