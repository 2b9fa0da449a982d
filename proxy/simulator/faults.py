"""Wire faults for a fault campaign: the ways a real upstream goes wrong, on purpose.

Each is a `SimConfig` field, so a model option (`sim@truncate_stream`), a `/control` key and a
CLI flag. They apply to chat and completions (connection- and status-level ones to embeddings too):

- `fail_rate` + `fail_status` (429/500/502/503/...), with `retry_after_s` a `Retry-After` header
- `refuse`: the connection is closed (RST) before any byte of an answer
- `reset_mid_body`: headers and half the body (or half the stream's events), then RST
- `truncate_stream`: half the content, no finish_reason, no usage chunk, no `[DONE]`; clean close
- `no_done`: a whole stream without `data: [DONE]`
- `malformed_chunk`: one `data: {"id": "broken` line (not JSON) in the middle of a stream
- `sse_multiline`: each event's JSON over several `data:` lines (legal SSE: joined with "\\n")
- `sse_comments`: a `: ping` comment before every event (legal SSE)
- `crlf`: CRLF line endings in the stream (legal SSE)
- `json_to_stream`: a stream request answered with the plain JSON completion
- `html_reply`: 200 `text/html`, an HTML page
- `echo_key`: 401 whose error `message`, `param` and `code` repeat the bearer key it was sent
- `bad_usage=negative|string|list|missing`: completion_tokens -100000 | every count a string |
  usage a list `[p, c, t]` | usage with only `prompt_tokens` (`no_usage` omits usage altogether)
- `bad_choices`: `choices: [1, "two", null]` (in a stream, on one mid-stream chunk)
- `object_content`: message content (or completion text, or a stream delta) is an object
- `max_n` (alias `fewer_choices`): fewer choices than `n`
- `trickle_ms`: the body goes out 64 bytes at a time with this pause between pieces
- `huge_body_mb`: choice 0's text starts with this many MB of " ok" (one token each, counted in
  usage): a huge but valid body, sent in 64 KiB pieces without being built in memory

`/stats` bills what was really generated and sent, whatever usage the fault reports.
Connection faults need the server's transport: `remember_transport` keeps it in the ASGI scope
(uvicorn's `send` is a bound method of the request cycle that owns it).
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol, runtime_checkable

from starlette.responses import Response, StreamingResponse

from .config import SimConfig

TRANSPORT = "itsproxy.sim.transport"
PIECE = 64 * 1024
TRICKLE_PIECE = 64
FILLER = " ok"  # one token per repetition
HTML = b"<!DOCTYPE html><html><head><title>Welcome</title></head><body><h1>It works!</h1></body></html>"
MALFORMED = b'data: {"id": "broken\n\n'
BAD_CHOICES = [1, "two", None]

Event = tuple[dict[str, Any], int, bool]


@runtime_checkable
class Transport(Protocol):
    def abort(self) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...
    def get_write_buffer_size(self) -> int: ...


def remember_transport(scope: dict[str, Any], send: Any) -> None:
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if isinstance(transport, Transport):
        scope[TRANSPORT] = transport


async def reset(transport: Transport | None) -> None:
    """Send what is buffered, then reset the connection (RST, not a clean close)."""
    if transport is None:
        raise RuntimeError("connection faults need uvicorn (no transport in the ASGI scope)")
    for _ in range(200):
        if transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.005)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    await asyncio.sleep(0.02)  # let the server see the connection gone before the app returns


class Refused(Response):
    """No answer at all: the connection is reset."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope, receive, send) -> None:
        await reset(scope.get(TRANSPORT))


def html_reply() -> Response:
    return Response(HTML, media_type="text/html")


# ---------------------------------------------------------------- body content


def with_bad_usage(usage: dict[str, int], mode: str) -> Any:
    p = usage["prompt_tokens"]
    if mode == "negative":
        return {"prompt_tokens": p, "completion_tokens": -100000, "total_tokens": p - 100000}
    if mode == "string":
        return {k: str(v) for k, v in usage.items()}
    if mode == "list":
        return [usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]]
    return {"prompt_tokens": p}  # missing


def _objectify(choice: dict[str, Any]) -> None:
    """Make the text of a choice (message, delta or completions text) an object."""
    for holder in (choice.get("message"), choice.get("delta")):
        if isinstance(holder, dict) and isinstance(holder.get("content"), str):
            holder["content"] = {"type": "text", "text": holder["content"]}
    if isinstance(choice.get("text"), str):
        choice["text"] = {"type": "text", "text": choice["text"]}


def filler(cfg: SimConfig) -> tuple[int, int]:
    """(repetitions of FILLER, its tokens) for `huge_body_mb`."""
    reps = int(cfg.huge_body_mb * 1024 * 1024) // len(FILLER)
    return reps, reps


def _add_usage(usage: Any, extra: int) -> None:
    if isinstance(usage, dict) and extra:
        usage["completion_tokens"] += extra
        usage["total_tokens"] += extra


def shape_body(cfg: SimConfig, body: dict[str, Any]) -> dict[str, Any]:
    """A non-stream body with the content faults applied (a copy)."""
    if not (cfg.bad_usage or cfg.bad_choices or cfg.object_content or cfg.huge_body_mb):
        return body
    body = copy.deepcopy(body)
    _add_usage(body.get("usage"), filler(cfg)[1] if cfg.huge_body_mb else 0)
    if cfg.bad_usage and isinstance(body.get("usage"), dict):
        body["usage"] = with_bad_usage(body["usage"], cfg.bad_usage)
    if cfg.object_content:
        for choice in body["choices"]:
            _objectify(choice)
    if cfg.bad_choices:
        body["choices"] = list(BAD_CHOICES)
    return body


HUGE_MARK = "\u0001huge\u0001"


def body_bytes(cfg: SimConfig, body: dict[str, Any]) -> Iterator[bytes]:
    """The serialized body; with `huge_body_mb`, choice 0's text is preceded by the filler,
    streamed piece by piece."""
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    holder = first.get("message") if first is not None and "message" in first else first
    key = "content" if holder is not None and "content" in holder else "text"
    if not cfg.huge_body_mb or holder is None or not isinstance(holder.get(key), str):
        yield json.dumps(body).encode()
        return
    holder[key] = HUGE_MARK + holder[key]
    head, tail = json.dumps(body).encode().split(json.dumps(HUGE_MARK)[1:-1].encode(), 1)
    yield head
    reps = filler(cfg)[0]
    per_piece = PIECE // len(FILLER)
    for start in range(0, reps, per_piece):
        yield (FILLER * min(per_piece, reps - start)).encode()
    yield tail


def body_length(cfg: SimConfig, body: dict[str, Any]) -> int:
    extra = filler(cfg)[0] * len(FILLER) if cfg.huge_body_mb else 0
    return len(json.dumps(body).encode()) + extra


# ---------------------------------------------------------------- streams


def shape_events(cfg: SimConfig, events: list[Event]) -> list[Event]:
    """The stream's events with the content faults applied (copies where changed)."""
    if cfg.truncate_stream:
        content = [i for i, (_, _, is_content) in enumerate(events) if is_content]
        cut = content[len(content) // 2] if content else 1
        events = [e for e in events[:cut] if not _finishes(e[0])]
    if not (cfg.bad_usage or cfg.bad_choices or cfg.object_content or cfg.huge_body_mb):
        return events
    out = []
    for event, carried, is_content in events:
        event = copy.deepcopy(event)
        if isinstance(event.get("usage"), dict):
            _add_usage(event["usage"], filler(cfg)[1] if cfg.huge_body_mb else 0)
            if cfg.bad_usage:
                event["usage"] = with_bad_usage(event["usage"], cfg.bad_usage)
        if cfg.object_content:
            for choice in event["choices"]:
                _objectify(choice)
        out.append((event, carried, is_content))
    if cfg.bad_choices and out:
        event, carried, is_content = out[len(out) // 2]
        out[len(out) // 2] = ({**event, "choices": list(BAD_CHOICES)}, carried, is_content)
    if cfg.huge_body_mb:
        out = _with_filler(cfg, out)
    return out


def _finishes(event: dict[str, Any]) -> bool:
    choices = event.get("choices")
    return not choices or any(isinstance(c, dict) and c.get("finish_reason") for c in choices)


def _with_filler(cfg: SimConfig, events: list[Event]) -> list[Event]:
    """Filler chunks (64 KiB of text each) before choice 0's first content chunk."""
    at = next((i for i, (e, _, is_content) in enumerate(events)
               if is_content and e["choices"] and e["choices"][0].get("index") == 0), None)
    if at is None:
        return events
    reps = filler(cfg)[0]
    per_piece = PIECE // len(FILLER)
    template = events[at][0]
    chunks = []
    for start in range(0, reps, per_piece):
        count = min(per_piece, reps - start)
        chunk = copy.deepcopy(template)
        choice = chunk["choices"][0]
        if "delta" in choice:
            choice["delta"] = {"content": FILLER * count}
        else:
            choice["text"] = FILLER * count
        choice["logprobs"] = None
        chunks.append((chunk, count, True))
    return events[:at] + chunks + events[at:]


def frame(cfg: SimConfig, event: dict[str, Any]) -> bytes:
    if cfg.sse_multiline:
        text = "".join(f"data: {line}\n" for line in json.dumps(event, indent=1).split("\n")) + "\n"
    else:
        text = f"data: {json.dumps(event)}\n\n"
    if cfg.sse_comments:
        text = ": ping\n\n" + text
    if cfg.crlf:
        text = text.replace("\n", "\r\n")
    return text.encode()


def done(cfg: SimConfig) -> bytes | None:
    if cfg.no_done or cfg.truncate_stream:
        return None
    return b"data: [DONE]\r\n\r\n" if cfg.crlf else b"data: [DONE]\n\n"


def pieces(cfg: SimConfig, data: bytes) -> Iterator[bytes]:
    """`data` as it goes on the wire: whole, or in small pieces when trickling."""
    if not cfg.trickle_ms:
        yield data
        return
    for i in range(0, len(data), TRICKLE_PIECE):
        yield data[i:i + TRICKLE_PIECE]


async def paced(cfg: SimConfig, parts: Iterator[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        for piece in pieces(cfg, part):
            if cfg.trickle_ms:
                await asyncio.sleep(cfg.trickle_ms / 1000.0)
            yield piece


def json_body_response(cfg: SimConfig, body: dict[str, Any], transport: Transport | None) -> Response:
    """A JSON answer with the body faults (trickle, huge, reset mid-body) applied."""
    if not (cfg.trickle_ms or cfg.huge_body_mb or cfg.reset_mid_body):
        return Response(json.dumps(body), media_type="application/json")
    length = body_length(cfg, body)

    async def gen() -> AsyncIterator[bytes]:
        sent = 0
        async for piece in paced(cfg, body_bytes(cfg, body)):
            if cfg.reset_mid_body and sent + len(piece) > length // 2:
                yield piece[:max(length // 2 - sent, 1)]
                await reset(transport)
                return
            sent += len(piece)
            yield piece

    return StreamingResponse(gen(), media_type="application/json", headers={"content-length": str(length)})
