"""What an upstream may answer, checked at the boundary before anything reads it.

Everything downstream (metering, extraction, votes, the passthrough relay) reads
replies as well-formed chat completions; a reply that is not one must stop here
as a 502-class `UpstreamProtocolError`, never reach them and become a 500.

The checks are plain code on the dicts `json.loads` gave, and they repair in
place what has one safe reading: content given as a list of text parts becomes
one string; `usage` that is not non-negative integers is dropped (the call is
then metered by estimate, never told negative). Unknown fields are kept: the
passthrough relays them. Why not pydantic or msgspec models: both cost more CPU
per reply than these checks (bench numbers in the module's tests' docstring) and
would copy every reply into objects that we would have to turn back into dicts.
"""

from __future__ import annotations

from typing import Any

from itsproxy.proxy.upstream.backends.base import UpstreamProtocolError

USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


def count(value: Any) -> bool:
    """A token count: a non-negative int (bool is not one)."""
    return type(value) is int and value >= 0


def clean_usage(usage: Any) -> dict[str, Any] | None:
    """The usage object if its counts are non-negative integers, else None (= missing: estimate)."""
    if not isinstance(usage, dict):
        return None
    if not count(usage.get("prompt_tokens")) or not count(usage.get("completion_tokens", 0)):
        return None
    if "total_tokens" in usage and not count(usage["total_tokens"]):
        return None
    details = usage.get("prompt_tokens_details")
    if details is not None and not (isinstance(details, dict) and count(details.get("cached_tokens", 0))):
        usage = {k: v for k, v in usage.items() if k != "prompt_tokens_details"}
    return usage


def _usage_in_place(payload: dict[str, Any]) -> dict[str, Any] | None:
    if "usage" not in payload:
        return None
    usage = clean_usage(payload["usage"])
    if usage is None:
        del payload["usage"]
    else:
        payload["usage"] = usage
    return usage


def _text(value: Any, where: str, usage: dict[str, Any] | None) -> str | None:
    """Message content: a string, null, or a list of text parts (joined)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = [p.get("text") for p in value if isinstance(p, dict)]
        if len(texts) == len(value) and all(isinstance(t, str) for t in texts):
            return "".join(texts)
    raise UpstreamProtocolError(f"upstream {where} content is a {type(value).__name__}, not text", usage=usage)


def _tool_calls(value: Any, where: str, usage: dict[str, Any] | None) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(tc, dict) for tc in value):
        raise UpstreamProtocolError(f"upstream {where} tool_calls is not a list of objects", usage=usage)
    for tc in value:
        fn = tc.get("function")
        if fn is not None and not isinstance(fn, dict):
            raise UpstreamProtocolError(f"upstream {where} tool call function is not an object", usage=usage)


def _choices(payload: dict[str, Any], usage: dict[str, Any] | None) -> list[dict[str, Any]]:
    choices = payload.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise UpstreamProtocolError("upstream reply's choices is not a list of objects", usage=usage)
    for i, c in enumerate(choices):
        index = c.setdefault("index", i)
        if type(index) is not int or index < 0:
            raise UpstreamProtocolError("upstream choice index is not a non-negative integer", usage=usage)
        reason = c.get("finish_reason")
        if reason is not None and not isinstance(reason, str):
            raise UpstreamProtocolError("upstream finish_reason is not a string", usage=usage)
        lp = c.get("logprobs")
        if lp is not None and not isinstance(lp, dict):
            raise UpstreamProtocolError("upstream logprobs is not an object", usage=usage)
    return choices


def check_completion(payload: Any) -> dict[str, Any]:
    """A non-streaming reply: a chat completion whose choices each carry a message."""
    if not isinstance(payload, dict):
        raise UpstreamProtocolError("upstream sent a response that is not a chat completion")
    usage = _usage_in_place(payload)
    for c in _choices(payload, usage):
        m = c.get("message")
        if not isinstance(m, dict):
            raise UpstreamProtocolError("upstream choice has no message object", usage=usage)
        if "content" in m:
            m["content"] = _text(m["content"], "message", usage)
        _tool_calls(m.get("tool_calls"), "message", usage)
    return payload


def check_chunk(chunk: Any) -> dict[str, Any]:
    """One stream chunk: choices carry deltas (possibly empty); the last may carry only usage."""
    if not isinstance(chunk, dict):
        raise UpstreamProtocolError("upstream stream chunk is not a JSON object")
    usage = _usage_in_place(chunk)
    if chunk.get("choices") is None:  # a usage-only chunk may say `choices: null` or nothing
        chunk["choices"] = []
    for c in _choices(chunk, usage):
        d = c.get("delta")
        if d is None:
            c["delta"] = d = {}
        if not isinstance(d, dict):
            raise UpstreamProtocolError("upstream stream choice's delta is not an object", usage=usage)
        if "content" in d:
            d["content"] = _text(d["content"], "delta", usage)
        _tool_calls(d.get("tool_calls"), "delta", usage)
    return chunk


def completion_as_chunks(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """A (checked) chat completion told as the chunks a stream would have carried.

    For an upstream that answers `stream: true` with one JSON completion: the
    answer is whole and valid, so the client gets it rather than an error.
    """
    base = {k: payload[k] for k in ("id", "created", "model", "system_fingerprint") if k in payload}
    base["object"] = "chat.completion.chunk"
    chunks = []
    for c in payload["choices"]:
        delta = {k: v for k, v in c["message"].items() if v is not None}
        if delta.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **tc} for i, tc in enumerate(delta["tool_calls"])]
        choice = {"index": c["index"], "delta": delta, "finish_reason": c.get("finish_reason") or "stop"}
        if c.get("logprobs") is not None:
            choice["logprobs"] = c["logprobs"]
        chunks.append({**base, "choices": [choice]})
    if payload.get("usage") is not None:
        chunks.append({**base, "choices": [], "usage": payload["usage"]})
    return chunks


class Finishes:
    """Which choices of a stream started and which finished: a stream cut short shows here."""

    def __init__(self) -> None:
        self.started: set[int] = set()
        self.finished: set[int] = set()

    def add(self, chunk: dict[str, Any]) -> None:
        for c in chunk["choices"]:
            self.started.add(c["index"])
            if c.get("finish_reason"):
                self.finished.add(c["index"])

    def check_ended(self) -> None:
        """The stream ended without [DONE]: fine if every choice finished, else it was cut."""
        if not self.started or self.started - self.finished:
            raise UpstreamProtocolError("upstream stream ended before its choices finished "
                                        "(no finish_reason, no [DONE])", "upstream_truncated")
