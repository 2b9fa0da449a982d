"""What an upstream may answer, checked at the boundary before anything reads it.

Everything downstream (metering, extraction, votes, the passthrough relay) reads
replies as well-formed chat completions; a reply that is not one must stop here
as a 502-class `UpstreamProtocolError`, never reach them and become a 500.

msgspec does both halves: `decode` parses JSON 3-6x faster than `json.loads`,
and `convert` checks the parsed dict against the small typed shape below (what
our code reads, nothing more) for ~1 us a choice, with an error that names the
path at fault (`$.choices[0].message.content`). Together they cost less CPU than
`json.loads` alone did (a 4-choice reply: ~6 us decode + ~3-5 us check against
~18 us for json.loads; a chunk: ~1 + ~1-2 us against ~6 us). The dicts themselves are
kept (unknown fields included, for the passthrough relay); the typed copy only
tells whether they are sound, and what has one safe reading is repaired in
place: content given as text parts becomes one string; `usage` whose counts are
not non-negative integers is dropped, so the call is metered by estimate and
never told negative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from itsproxy.proxy.upstream.backends.base import UpstreamProtocolError

Count = Annotated[int, msgspec.Meta(ge=0)]  # bool, float, str and negatives all fail
_json = msgspec.json.Decoder()


def decode_json(raw: bytes | str) -> Any:
    """JSON text to Python values (NaN and Infinity are refused: they are not JSON)."""
    return _json.decode(raw)


class _TextPart(msgspec.Struct):
    text: str


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    function: _Function | None = None


class _Message(msgspec.Struct):
    content: str | list[_TextPart] | None = None
    tool_calls: list[_ToolCall] | None = None
    refusal: str | None = None


class _Logprobs(msgspec.Struct):
    content: list[dict[str, Any]] | None = None


class _Choice(msgspec.Struct):
    message: _Message
    index: Count | None = None
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class _DeltaChoice(msgspec.Struct):
    delta: _Message | None = None
    index: Count | None = None
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice]


class _Chunk(msgspec.Struct):
    choices: list[_DeltaChoice] | None = None


class _Details(msgspec.Struct):
    cached_tokens: Count = 0


class _Usage(msgspec.Struct):
    prompt_tokens: Count
    completion_tokens: Count = 0
    total_tokens: Count | None = None
    prompt_tokens_details: _Details | None = None


class _GenerationUsage(_Usage):
    completion_tokens: Count  # a generation's usage without it would meter the answer as free


def clean_usage(usage: Any, generation: bool = True) -> dict[str, Any] | None:
    """The usage object if its counts are non-negative integers (and, for a generation, it has
    completion_tokens), else None (= missing: estimate)."""
    try:
        msgspec.convert(usage, _GenerationUsage if generation else _Usage)
    except msgspec.ValidationError:
        return None
    return usage


def _usage_in_place(payload: dict[str, Any], generation: bool = True) -> dict[str, Any] | None:
    if "usage" not in payload:
        return None
    usage = clean_usage(payload["usage"], generation)
    if usage is None:
        del payload["usage"]
    return usage


def _typed(payload: dict[str, Any], shape: type, usage: dict[str, Any] | None) -> Any:
    try:
        return msgspec.convert(payload, shape)
    except msgspec.ValidationError as exc:
        raise UpstreamProtocolError(f"upstream reply is malformed: {exc}", usage=usage) from None


def _repair(raw: dict[str, Any], typed: _Message) -> None:
    """Text parts joined into one string, the only content shape downstream reads."""
    if isinstance(typed.content, list):
        raw["content"] = "".join(p.text for p in typed.content)


def check_completion(payload: Any) -> dict[str, Any]:
    """A non-streaming reply: a chat completion whose choices each carry a message."""
    if not isinstance(payload, dict):
        raise UpstreamProtocolError("upstream sent a response that is not a chat completion")
    usage = _usage_in_place(payload)
    typed = _typed(payload, _Completion, usage)
    for i, (raw, c) in enumerate(zip(payload["choices"], typed.choices)):
        if c.index is None:
            raw["index"] = i
        _repair(raw["message"], c.message)
    return payload


def check_chunk(chunk: Any) -> dict[str, Any]:
    """One stream chunk: choices carry deltas (possibly empty); the last may carry only usage."""
    if not isinstance(chunk, dict):
        raise UpstreamProtocolError("upstream stream chunk is not a JSON object")
    usage = _usage_in_place(chunk)
    typed = _typed(chunk, _Chunk, usage)
    if typed.choices is None:  # a usage-only chunk may say `choices: null` or nothing
        chunk["choices"] = []
        return chunk
    for raw, c in zip(chunk["choices"], typed.choices):
        if c.index is None:
            raw["index"] = 0
        if c.delta is None:
            raw["delta"] = {}
        else:
            _repair(raw["delta"], c.delta)
    return chunk


def completion_as_chunks(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """A (checked) chat completion told as the chunks a stream would have carried.

    For an upstream that answers `stream: true` with one JSON completion: the
    answer is whole and valid, so the client gets it rather than an error.
    """
    base: dict[str, Any] = {k: payload[k] for k in ("id", "created", "model", "system_fingerprint") if k in payload}
    base["object"] = "chat.completion.chunk"
    chunks: list[dict[str, Any]] = []
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


# ---------------------------------------------------------------- the legacy Completions API and embeddings


class _TextChoice(msgspec.Struct):
    text: str
    index: Count | None = None
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class _TextCompletion(msgspec.Struct):
    choices: list[_TextChoice]


class _TextChunk(msgspec.Struct):
    choices: list[_TextChoice] | None = None


class _Embedding(msgspec.Struct):
    embedding: list[float] | str  # floats, or base64 when the client asked for it
    index: Count | None = None


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]


def check_text_completion(payload: Any) -> dict[str, Any]:
    """A non-streaming /completions reply: choices of text."""
    if not isinstance(payload, dict):
        raise UpstreamProtocolError("upstream sent a response that is not a text completion")
    usage = _usage_in_place(payload)
    typed = _typed(payload, _TextCompletion, usage)
    for i, (raw, c) in enumerate(zip(payload["choices"], typed.choices)):
        if c.index is None:
            raw["index"] = i
    return payload


def check_text_chunk(chunk: Any) -> dict[str, Any]:
    if not isinstance(chunk, dict):
        raise UpstreamProtocolError("upstream stream chunk is not a JSON object")
    usage = _usage_in_place(chunk)
    typed = _typed(chunk, _TextChunk, usage)
    if typed.choices is None:
        chunk["choices"] = []
    for raw, c in zip(chunk["choices"], typed.choices or []):
        if c.index is None:
            raw["index"] = 0
    return chunk


def text_as_chunks(payload: dict[str, Any]) -> list[dict[str, Any]]:
    base: dict[str, Any] = {k: payload[k] for k in ("id", "created", "model") if k in payload}
    base["object"] = "text_completion"
    chunks: list[dict[str, Any]] = [{**base, "choices": [c]} for c in payload["choices"]]
    if payload.get("usage") is not None:
        chunks.append({**base, "choices": [], "usage": payload["usage"]})
    return chunks


def check_embeddings(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise UpstreamProtocolError("upstream sent a response that is not an embeddings list")
    usage = _usage_in_place(payload, generation=False)
    _typed(payload, _Embeddings, usage)
    return payload


def _no_stream(payload: Any) -> Any:
    raise UpstreamProtocolError("this endpoint does not stream")


@dataclass(frozen=True)
class Wire:
    """One upstream endpoint: its path and how its replies and chunks are checked."""

    path: str
    check: Callable[[Any], dict[str, Any]]
    check_chunk: Callable[[Any], dict[str, Any]]
    as_chunks: Callable[[dict[str, Any]], list[dict[str, Any]]]


CHAT = Wire("chat/completions", check_completion, check_chunk, completion_as_chunks)
TEXT = Wire("completions", check_text_completion, check_text_chunk, text_as_chunks)
EMBEDDINGS = Wire("embeddings", check_embeddings, _no_stream, _no_stream)
