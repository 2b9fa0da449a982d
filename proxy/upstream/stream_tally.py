"""Reassembling one streamed choice into the message a non-streaming call would have returned."""

from __future__ import annotations

from typing import Any


class StreamedMessage:
    def __init__(self) -> None:
        self.content: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.logprob_content: list[dict[str, Any]] = []
        self.saw_logprobs = False

    def add_choice(self, choice: dict[str, Any]) -> None:
        """One choice's delta; `finish_reason` is set once the choice is done."""
        delta = choice.get("delta") or {}
        if delta.get("content"):
            self.content.append(delta["content"])
        if choice.get("text"):  # a /completions chunk
            self.content.append(choice["text"])
        for tc in delta.get("tool_calls") or []:
            self._tool_delta(tc)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        lp = choice.get("logprobs")
        if lp:
            self.saw_logprobs = True
            self.logprob_content += lp.get("content") or []

    def _tool_delta(self, tc: dict[str, Any]) -> None:
        slot = self.tool_calls.setdefault(tc.get("index", len(self.tool_calls)),
                                          {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if tc.get("id"):
            slot["id"] = tc["id"]
        fn = tc.get("function") or {}
        slot["function"]["name"] += fn.get("name") or ""
        slot["function"]["arguments"] += fn.get("arguments") or ""

    def message(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) if self.content else None}
        if self.tool_calls:
            out["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return out

    def logprobs(self) -> dict[str, Any] | None:
        return {"content": self.logprob_content} if self.saw_logprobs else None


class ChoiceTally:
    """Every choice of one stream, reassembled as its chunks pass (for metering and candidates)."""

    def __init__(self) -> None:
        self.parts: dict[int, StreamedMessage] = {}
        self.finished: list[int] = []  # choice indices, in the order they finished

    def add(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            part = self.parts.get(index)
            if part is None:
                part = self.parts[index] = StreamedMessage()
            part.add_choice(choice)
            if choice.get("finish_reason"):
                self.finished.append(index)

    def messages(self) -> list[dict[str, Any]]:
        return [self.parts[i].message() for i in sorted(self.parts)]
