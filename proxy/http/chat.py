"""POST /v1/chat/completions: Chat Completions in and out; `proxy.scaling` does the rest."""

from __future__ import annotations

from typing import Any

from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.http.chat_request import parse_request
from itsproxy.proxy.http.sse import DONE, sse
from itsproxy.proxy.outcome import Outcome, new_id
from itsproxy.proxy.scaling import Call


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
    def parse(self, body: Any) -> Call:
        return parse_request(body)

    def upstream_body(self, call: Call) -> dict[str, Any]:
        body = {**call.params, "messages": call.messages}
        if call.n is not None:
            body["n"] = call.n
        return body

    def render(self, outcome: Outcome) -> dict[str, Any]:
        winner = outcome.winner
        choice = {"index": 0, "message": dict(winner.message), "finish_reason": winner.sample.finish_reason or "stop",
                  "logprobs": winner.sample.logprobs}
        return {"id": outcome.id, "object": "chat.completion", "created": outcome.created, "model": outcome.model,
                "choices": [choice], "usage": outcome.usage(), "system_fingerprint": None, "its": outcome.its()}

    def render_passthrough(self, resp: dict[str, Any], its: dict[str, Any], usage: dict[str, int]) -> dict[str, Any]:
        return {**resp, "usage": {**(resp.get("usage") or {}), **usage}, "its": its}

    def scaling_stream(self, call: Call) -> "ChatScalingStream":
        return ChatScalingStream(call)

    def relay(self, call: Call) -> "ChatRelay":
        return ChatRelay(call.include_usage)


class ChatScalingStream:
    """A scaling route's stream: the role chunk at once, then the selected answer."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.id, self.created = new_id()

    def opening(self) -> list[bytes]:
        return [sse(chunk(self.id, self.created, self.call.model, {"role": "assistant", "content": ""}))]

    def answer(self, outcome: Outcome) -> list[bytes]:
        rid, created, model = self.id, self.created, self.call.model
        sample = outcome.winner.sample
        deltas = message_deltas(dict(outcome.winner.message))
        parts = [sse(chunk(rid, created, model, d)) for d in deltas]
        if sample.logprobs and parts:  # the winner's logprobs ride on its first content chunk
            first = chunk(rid, created, model, deltas[0])
            first["choices"][0]["logprobs"] = sample.logprobs
            parts[0] = sse(first)
        final = chunk(rid, created, model, {}, sample.finish_reason or "stop")
        if self.call.include_usage:
            parts.append(sse(final))
            final = chunk(rid, created, model, None, usage=outcome.usage())
        final["its"] = outcome.its()
        return [*parts, sse(final), DONE]

    def error(self, err: ApiError) -> list[bytes]:
        return [sse(err.body())]


class ChatRelay:
    """A passthrough stream, relayed live. The upstream is always asked for usage (to meter);
    the client gets a usage chunk only if it asked, made from the ledger, so it is there
    (flagged estimated in `its`) even when the upstream sent none. `its` rides on the last chunk."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.held: dict[str, Any] | None = None
        self.head: dict[str, Any] = {}

    def feed(self, c: dict[str, Any]) -> list[bytes]:
        if not self.head:
            self.head = {k: c.get(k) for k in ("id", "object", "created", "model", "system_fingerprint")}
        c.pop("usage", None)
        if not c.get("choices"):
            return []  # the usage chunk asked for on our own behalf: the ledger has read it
        out = [sse(self.held)] if self.held is not None else []
        self.held = c
        return out

    def end(self, its: dict[str, Any], usage: dict[str, int]) -> list[bytes]:
        out = []
        if self.include_usage:
            if self.held is not None:
                out.append(sse(self.held))
            self.held = {**self.head, "choices": [], "usage": usage}
        if self.held is not None:
            self.held["its"] = its
            out.append(sse(self.held))
        return [*out, DONE]

    def error(self, err: ApiError) -> list[bytes]:
        out = [sse(self.held)] if self.held is not None else []
        self.held = None
        return [*out, sse(err.body())]
