"""Legacy Completions wire shapes (`object: "text_completion"`): bodies, SSE chunks, and
logprobs in the completions format `{tokens, token_logprobs, top_logprobs: [{tok: lp}], text_offset}`.

Pure (no I/O). Token logprobs come from `wire.token_logprobs` (chat format) and are only
re-shaped here, so both surfaces carry the same signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .wire import CHUNK_TOKENS, token_pieces

# A chat-format logprob entry: {"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob"}]};
# an echoed prompt's first entry has logprob None (nothing predicts it).
Entry = dict[str, Any]


@dataclass(slots=True)
class Row:
    """One returned choice."""

    index: int
    echo: str  # the prompt, when echoed ("" otherwise)
    echo_entries: list[Entry] | None  # the prompt's logprobs (echo with logprobs)
    text: str  # the completion proper
    entries: list[Entry] | None  # its logprobs, when asked for
    finish_reason: str


def logprobs_of(entries: list[Entry], start: int) -> dict[str, Any]:
    """Completions-format logprobs of `entries`, their text offsets counted from `start`."""
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    pos = start
    for e in entries:
        out["tokens"].append(e["token"])
        out["token_logprobs"].append(e["logprob"])
        top = None if e["logprob"] is None else {t["token"]: t["logprob"] for t in e["top_logprobs"]}
        out["top_logprobs"].append(top)
        out["text_offset"].append(pos)
        pos += len(e["token"])
    return out


def _row_logprobs(row: Row) -> dict[str, Any] | None:
    if row.entries is None:
        return None
    return logprobs_of((row.echo_entries or []) + row.entries, 0)


def completion(cid: str, created: int, model: str, rows: list[Row], usage: dict | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"text": r.echo + r.text, "index": r.index, "logprobs": _row_logprobs(r),
                     "finish_reason": r.finish_reason} for r in rows],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def stream_events(cid: str, created: int, model: str, rows: list[Row], usage: dict | None,
                  include_usage: bool) -> list[tuple[dict[str, Any], int, bool]]:
    """The chunks of a streamed completion as (chunk, completion tokens it carries, is a content
    chunk): each choice's echoed prompt first, then the choices' text round-robin, each choice
    finishing with an empty-text chunk that carries its finish_reason; then the usage chunk."""

    def chunk(index: int, text: str, logprobs: dict | None, finish: str | None) -> dict[str, Any]:
        c = {"id": cid, "object": "text_completion", "created": created, "model": model,
             "choices": [{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}]}
        if include_usage:
            c["usage"] = None
        return c

    events: list[tuple[dict[str, Any], int, bool]] = []
    bodies: list[list[tuple[dict[str, Any], int, bool]]] = []
    for r in rows:
        offset = 0
        if r.echo:
            lp = logprobs_of(r.echo_entries or [], 0) if r.entries is not None else None
            events.append((chunk(r.index, r.echo, lp, None), 0, False))
            offset = len(r.echo)
        parts = []
        pieces = token_pieces(r.text)  # the same tokens the entries were made from
        for g in range(0, len(pieces), CHUNK_TOKENS):
            group = pieces[g:g + CHUNK_TOKENS]
            text = b"".join(group).decode("utf-8", "replace")
            lp = logprobs_of(r.entries[g:g + CHUNK_TOKENS], offset) if r.entries is not None else None
            parts.append((chunk(r.index, text, lp, None), len(group), True))
            offset += len(text)
        parts.append((chunk(r.index, "", None, r.finish_reason), 0, False))
        bodies.append(parts)
    for step in range(max((len(b) for b in bodies), default=0)):
        for parts in bodies:
            if step < len(parts):
                events.append(parts[step])
    if include_usage and usage is not None:
        final = chunk(0, "", None, None)
        final["choices"] = []
        final["usage"] = usage
        events.append((final, 0, False))
    return events

