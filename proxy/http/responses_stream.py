"""Chat deltas in, Responses stream events out.

One translator serves both kinds of route: a passthrough relay feeds it the
upstream's chat chunks live, a scaling route feeds it the selected message cut
into deltas. It keeps the output items as they grow, numbers every event
(`sequence_number`), and ends with `response.completed` (or `.incomplete` at
the token limit, `.failed` on an error) carrying the whole Response, usage and
`its`, in the order the openai SDK's stream helper checks: created, in_progress,
then per item added → (part added → deltas → done → part done) → item done.
"""

from __future__ import annotations

from typing import Any, Protocol

from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.http.responses_items import (
    function_call_item,
    incomplete,
    item_id,
    message_item,
    text_part,
)
from itsproxy.proxy.http.responses_items import (
    usage as responses_usage,
)
from itsproxy.proxy.http.sse import sse


class ResponseBuilder(Protocol):
    """Builds this stream's Response object (one id, one created_at) in a given state."""

    def __call__(self, *, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                 its: dict[str, Any] | None = None, incomplete_details: dict[str, str] | None = None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]: ...


class ResponseEvents:
    def __init__(self, build: ResponseBuilder) -> None:
        self.build = build
        self.seq = 0
        self.opened = False
        self.output: list[dict[str, Any]] = []
        self.message: int | None = None  # output index of the open message item
        self.calls: dict[int, int] = {}  # chat tool-call index -> output index
        self.open_calls: list[int] = []

    def _event(self, type: str, **fields: Any) -> bytes:
        # Serialized at once: items growing later never change an event already built.
        data = {"type": type, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse(data, event=type)

    def open(self) -> list[bytes]:
        if self.opened:
            return []
        self.opened = True
        response = self.build(status="in_progress", output=[])
        return [self._event("response.created", response=response),
                self._event("response.in_progress", response=response)]

    # -- deltas ---------------------------------------------------------------------------------

    def delta(self, delta: dict[str, Any], logprobs: list[dict[str, Any]] | None = None) -> list[bytes]:
        out = self.open()
        content, refusal = delta.get("content"), delta.get("refusal")
        if isinstance(content, str) and content:
            out += self._text(content, logprobs or [])
        if isinstance(refusal, str) and refusal:
            out += self._refusal(refusal)
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                out += self._tool_call(call)
        return out

    def _part(self, kind: str) -> tuple[list[bytes], dict[str, Any], int]:
        """The open message's last part, if it is of `kind`; else a new one (a new message if none is open)."""
        out: list[bytes] = []
        if self.message is None:
            self.message = len(self.output)
            self.output.append(message_item(item_id("msg"), "in_progress", []))
            out.append(self._event("response.output_item.added", output_index=self.message,
                                   item=self.output[self.message]))
        item = self.output[self.message]
        if item["content"] and item["content"][-1]["type"] == kind:
            return out, item, len(item["content"]) - 1
        if item["content"]:
            out += self._close_part(item, len(item["content"]) - 1)
        part = text_part("") if kind == "output_text" else {"type": "refusal", "refusal": ""}
        item["content"].append(part)
        index = len(item["content"]) - 1
        out.append(self._event("response.content_part.added", item_id=item["id"], output_index=self.message,
                               content_index=index, part=part))
        return out, item, index

    def _text(self, text: str, logprobs: list[dict[str, Any]]) -> list[bytes]:
        out, item, index = self._part("output_text")
        part = item["content"][index]
        part["text"] += text
        part["logprobs"] += logprobs
        out.append(self._event("response.output_text.delta", item_id=item["id"], output_index=self.message,
                               content_index=index, delta=text, logprobs=logprobs))
        return out

    def _refusal(self, refusal: str) -> list[bytes]:
        out, item, index = self._part("refusal")
        item["content"][index]["refusal"] += refusal
        out.append(self._event("response.refusal.delta", item_id=item["id"], output_index=self.message,
                               content_index=index, delta=refusal))
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        raw_fn = call.get("function")
        fn: dict[str, Any] = raw_fn if isinstance(raw_fn, dict) else {}
        if index not in self.calls:
            out += self._close_message("completed")
            self.calls[index] = len(self.output)
            self.open_calls.append(len(self.output))
            raw_name, raw_id = fn.get("name"), call.get("id")
            name = raw_name if isinstance(raw_name, str) else ""
            call_id = raw_id if isinstance(raw_id, str) else item_id("call")
            self.output.append(function_call_item(item_id("fc"), call_id, name, "", "in_progress"))
            out.append(self._event("response.output_item.added", output_index=self.calls[index],
                                   item=self.output[self.calls[index]]))
        at = self.calls[index]
        item = self.output[at]
        if not item["name"] and isinstance(fn.get("name"), str):
            item["name"] = fn["name"]
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            item["arguments"] += args
            out.append(self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=at,
                                   delta=args))
        return out

    # -- closing --------------------------------------------------------------------------------

    def _close_part(self, item: dict[str, Any], index: int) -> list[bytes]:
        part = item["content"][index]
        where = {"item_id": item["id"], "output_index": self.message, "content_index": index}
        if part["type"] == "output_text":
            done = self._event("response.output_text.done", **where, text=part["text"], logprobs=part["logprobs"])
        else:
            done = self._event("response.refusal.done", **where, refusal=part["refusal"])
        return [done, self._event("response.content_part.done", **where, part=part)]

    def _close_message(self, status: str) -> list[bytes]:
        if self.message is None:
            return []
        item = self.output[self.message]
        out = self._close_part(item, len(item["content"]) - 1) if item["content"] else []
        item["status"] = status
        out.append(self._event("response.output_item.done", output_index=self.message, item=item))
        self.message = None
        return out

    def _close_calls(self, status: str) -> list[bytes]:
        out = []
        for at in self.open_calls:
            item = self.output[at]
            item["status"] = status
            out.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=at,
                                   arguments=item["arguments"]))
            out.append(self._event("response.output_item.done", output_index=at, item=item))
        self.open_calls = []
        return out

    def finish(self, finish_reason: str | None, chat_usage: dict[str, Any], its: dict[str, Any]) -> list[bytes]:
        """Close what is open and send the whole Response: completed, or incomplete at a limit."""
        out = self.open()
        if not self.output:  # an empty answer is still one (empty) message, as non-stream renders it
            out += self._text_placeholder()
        details = incomplete(finish_reason)
        status = "incomplete" if details else "completed"
        out += self._close_message(status) + self._close_calls(status)
        response = self.build(status=status, output=self.output, usage=responses_usage(chat_usage), its=its,
                              incomplete_details=details)
        return [*out, self._event(f"response.{status}", response=response)]

    def _text_placeholder(self) -> list[bytes]:
        out, _, _ = self._part("output_text")
        return out

    def fail(self, err: ApiError) -> list[bytes]:
        """`response.failed`, with the output as far as it got (the SDK keeps it on the event)."""
        out = self.open()
        code = "rate_limit_exceeded" if err.status == 429 else "server_error"
        error = {"code": code, "message": err.message}
        response = self.build(status="failed", output=self.output, error=error,
                              its={"error": {**err.body()["error"], "status": err.status}})
        return [*out, self._event("response.failed", response=response)]

