"""POST /v1/chat/completions: Chat Completions in and out; `proxy.scaling` does the rest."""

from __future__ import annotations

from typing import Any

from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.http.chat_request import parse_request
from itsproxy.proxy.http.relay import ChunkRelay
from itsproxy.proxy.http.sse import DONE, sse
from itsproxy.proxy.outcome import Outcome, new_id
from itsproxy.proxy.surface import Call
from itsproxy.proxy.upstream.replies import CHAT


def chunk(id: str, created: int, model: str, delta: dict[str, Any] | None, finish: str | None = None,
          **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices, **extra}


def message_deltas(message: dict[str, Any], size: int = 48) -> list[dict[str, Any]]:
    """The selected message as stream deltas: content in pieces, tool calls whole."""
    deltas: list[dict[str, Any]] = []
    content = message.get("content")
    if isinstance(content, str):
        deltas += [{"content": content[i:i + size]} for i in range(0, len(content), size)]
    for i, call in enumerate(message.get("tool_calls") or []):
        deltas.append({"tool_calls": [{"index": i, "id": call.get("id"), "type": call.get("type", "function"),
                                       "function": call.get("function")}]})
    if message.get("refusal"):
        deltas.append({"refusal": message["refusal"]})
    return deltas


class ChatSurface:
    wire = CHAT

    def __init__(self, drop_params: bool = False) -> None:
        self.drop_params = drop_params

    def parse(self, body: Any) -> Call:
        return parse_request(body, self.drop_params)

    def check_scaling(self, call: Call) -> None:
        return None  # every chat request can be scaled

    def upstream_body(self, call: Call) -> dict[str, Any]:
        body = {**call.params, "messages": call.messages}
        if call.n is not None:
            body["n"] = call.n
        return body

    def render(self, outcome: Outcome, call: Call) -> dict[str, Any]:
        choices = [{"index": i, "message": dict(c.message), "finish_reason": c.sample.finish_reason or "stop",
                    "logprobs": c.sample.logprobs} for i, c in enumerate(outcome.ranked(call.returned))]
        return {"id": outcome.id, "object": "chat.completion", "created": outcome.created, "model": outcome.model,
                "choices": choices, "usage": outcome.usage(), "system_fingerprint": None, "its": outcome.its()}

    def render_passthrough(self, resp: dict[str, Any], its: dict[str, Any], usage: dict[str, int]) -> dict[str, Any]:
        return {**resp, "usage": {**(resp.get("usage") or {}), **usage}, "its": its}

    def scaling_stream(self, call: Call) -> ChatScalingStream:
        return ChatScalingStream(call)

    def relay(self, call: Call) -> ChunkRelay:
        return ChunkRelay(call.include_usage)


class ChatScalingStream:
    """A scaling route's stream: the role chunk at once, then the selected answer."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.id, self.created = new_id()

    def opening(self) -> list[bytes]:
        return [sse(chunk(self.id, self.created, self.call.model, {"role": "assistant", "content": ""}))]

    def answer(self, outcome: Outcome) -> list[bytes]:
        rid, created, model = self.id, self.created, self.call.model
        parts: list[bytes] = []
        finishes = []
        for i, c in enumerate(outcome.ranked(self.call.returned)):
            deltas = message_deltas(dict(c.message)) or [{"content": ""}]
            for j, d in enumerate(deltas):
                part = chunk(rid, created, model, d)
                part["choices"][0]["index"] = i
                if j == 0 and c.sample.logprobs:  # a choice's logprobs ride on its first content chunk
                    part["choices"][0]["logprobs"] = c.sample.logprobs
                parts.append(sse(part))
            finishes.append({"index": i, "delta": {}, "finish_reason": c.sample.finish_reason or "stop",
                             "logprobs": None})
        final = chunk(rid, created, model, None)
        final["choices"] = finishes
        if self.call.include_usage:
            parts.append(sse(final))
            final = chunk(rid, created, model, None, usage=outcome.usage())
        final["its"] = outcome.its()
        return [*parts, sse(final), DONE]

    def error(self, err: ApiError) -> list[bytes]:
        return [sse(err.body())]
