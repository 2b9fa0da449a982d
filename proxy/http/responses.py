"""POST /v1/responses: the Responses API in and out; `proxy.scaling` does the rest.

Same routes, same strategies, same metering as chat: the request becomes one chat
`Call` (proxy/http/responses_request.py), the answer becomes a Response object or
its event stream (responses_items.py, responses_stream.py). Upstreams are asked in
Chat Completions, which all of them speak (the simulator, llama.cpp and most
OpenAI-compatible servers have no /v1/responses).

One surface per request: `parse` keeps the request's echo fields (tools,
instructions, text …), which the Response object repeats and which `render`
would otherwise not see.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.http.chat import message_deltas
from itsproxy.proxy.http.responses_items import (
    chat_logprobs,
    first_choice,
    incomplete,
    item_id,
    output_items,
)
from itsproxy.proxy.http.responses_items import (
    usage as responses_usage,
)
from itsproxy.proxy.http.responses_request import ResponsesRequest, parse_responses
from itsproxy.proxy.http.responses_stream import ResponseEvents
from itsproxy.proxy.outcome import Outcome
from itsproxy.proxy.surface import Call
from itsproxy.proxy.upstream.replies import CHAT


class ResponsesSurface:
    """One per request: the Response object repeats fields of the request (tools, text, …)."""

    wire = CHAT  # the upstreams here lack /v1/responses: passthrough goes through chat, translated

    def __init__(self) -> None:
        self._request: ResponsesRequest | None = None

    def check_scaling(self, call: Call) -> None:
        return None  # every Responses request can be scaled

    @property
    def request(self) -> ResponsesRequest:
        assert self._request is not None, "parse() comes first"
        return self._request

    def parse(self, body: Any) -> Call:
        self._request = parse_responses(body)
        return self._request.call

    def upstream_body(self, call: Call) -> dict[str, Any]:
        return {**call.params, "messages": call.messages}

    def response(self, rid: str, created: int, *, status: str, output: list[dict[str, Any]],
                 usage: dict[str, Any] | None = None, its: dict[str, Any] | None = None,
                 incomplete_details: dict[str, str] | None = None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:
        """The Response object (openai/types/responses/response.py), plus `its`."""
        body = {"id": rid, "object": "response", "created_at": created, "status": status,
                "model": self.request.call.model, "output": output, "error": error,
                "incomplete_details": incomplete_details, "usage": usage, **self.request.echo}
        if its is not None:
            body["its"] = its
        return body

    def _logprobs(self, logprobs: Any) -> dict[str, Any] | None:
        return logprobs if self.request.call.params.get("logprobs") else None  # only when asked for

    def _finished(self, created: int, message: dict[str, Any], finish: str | None, logprobs: Any,
                  chat_usage: dict[str, Any], its: dict[str, Any]) -> dict[str, Any]:
        details = incomplete(finish)
        return self.response(item_id("resp"), created, status="incomplete" if details else "completed",
                             output=output_items(message, finish, self._logprobs(logprobs)),
                             usage=responses_usage(chat_usage), its=its, incomplete_details=details)

    def render(self, outcome: Outcome, call: Call) -> dict[str, Any]:
        w = outcome.winner
        return self._finished(outcome.created, dict(w.message), w.sample.finish_reason, w.sample.logprobs,
                              outcome.usage(), outcome.its())

    def render_passthrough(self, resp: dict[str, Any], its: dict[str, Any], usage: dict[str, int]) -> dict[str, Any]:
        choice = first_choice(resp)
        raw_message, raw_created = choice.get("message"), resp.get("created")
        message: dict[str, Any] = raw_message if isinstance(raw_message, dict) else {}
        created = raw_created if isinstance(raw_created, int) else _now()
        return self._finished(created, message, choice.get("finish_reason"), choice.get("logprobs"),
                              {**(resp.get("usage") or {}), **usage}, its)

    def _events(self) -> ResponseEvents:
        rid, created = item_id("resp"), _now()
        return ResponseEvents(functools.partial(self.response, rid, created))

    def scaling_stream(self, call: Call) -> ResponsesScalingStream:
        return ResponsesScalingStream(self._events(), self._logprobs)

    def relay(self, call: Call) -> ResponsesRelay:
        return ResponsesRelay(self._events())


class ResponsesScalingStream:
    """A scaling route's stream: created and in_progress at once (keepalives while the route works),
    then the selected answer's events and `response.completed`."""

    def __init__(self, events: ResponseEvents, logprobs: Any) -> None:
        self.events = events
        self.logprobs = logprobs

    def opening(self) -> list[bytes]:
        return self.events.open()

    def answer(self, outcome: Outcome) -> list[bytes]:
        sample = outcome.winner.sample
        out: list[bytes] = []
        logprobs = chat_logprobs(self.logprobs(sample.logprobs))
        for i, delta in enumerate(message_deltas(dict(outcome.winner.message))):
            out += self.events.delta(delta, logprobs if i == 0 else None)  # logprobs ride on the first delta
        return out + self.events.finish(sample.finish_reason, outcome.usage(), outcome.its())

    def error(self, err: ApiError) -> list[bytes]:
        return self.events.fail(err)


class ResponsesRelay:
    """A passthrough stream: the upstream's chat chunks, translated live. Usage comes from the ledger
    (the upstream is always asked for it; estimated, and flagged in `its`, if it sent none)."""

    def __init__(self, events: ResponseEvents) -> None:
        self.events = events
        self.finish_reason: str | None = None

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        out = self.events.open()
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # a Responses call asks for one choice
            if isinstance(choice.get("delta"), dict):
                out += self.events.delta(choice["delta"], chat_logprobs(choice.get("logprobs")))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def end(self, its: dict[str, Any], usage: dict[str, int]) -> list[bytes]:
        return self.events.finish(self.finish_reason, usage, its)

    def error(self, err: ApiError) -> list[bytes]:
        return self.events.fail(err)


def _now() -> int:
    return int(time.time())
