"""How every simulator endpoint answers over HTTP: reading the request, the gate (hang,
latency, injected failures), errors, JSON bodies and SSE streams, each billed in `/stats`.

One module for all surfaces (chat, completions, embeddings), so a model option such as
`sim@fail_rate=1` or `sim@no_n` means the same thing on each of them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from . import faults, wire
from .config import SimConfig
from .state import SimState

MAX_N = 128

# A stream event: (the chunk, the completion tokens it carries, whether it is a content chunk).
Event = tuple[dict[str, Any], int, bool]


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json")


class SSEResponse(StreamingResponse):
    """Closes its generator however the response ends, so an early client close is
    always seen by the generator's `finally`."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]  # an async generator here


async def read_json(request: Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError, ClientDisconnect):
        return None
    return body if isinstance(body, dict) else None


def error(st: SimState, model: str, message: str, param: str | None = None, code: str | None = None,
          status: int = 400) -> Response:
    st.stats.add(model, errors=1)
    return json_response(wire.error_body(message, "invalid_request_error", param, code), status)


async def gate(st: SimState, request: Request, model: str, cfg: SimConfig) -> Response | None:
    """Hang, latency and injected faults; an error response, or None to go on."""
    if cfg.hang:
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline and not st.closing and not await request.is_disconnected():
            await asyncio.sleep(0.05)
        st.stats.add(model, errors=1)
        return json_response(wire.error_body("hung (simulated)", "server_error"), 504)
    if cfg.latency_ms or cfg.latency_jitter_ms:
        jitter = st.fault_rng.uniform(0, cfg.latency_jitter_ms) if cfg.latency_jitter_ms else 0.0
        await asyncio.sleep((cfg.latency_ms + jitter) / 1000.0)
    if cfg.refuse or cfg.html_reply:
        st.stats.add(model, errors=1)
        return faults.Refused() if cfg.refuse else faults.html_reply()
    if cfg.echo_key:  # a careless upstream: its 401 repeats the key it was sent, in every field
        st.stats.add(model, errors=1)
        key = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return json_response(wire.error_body(f"Incorrect API key provided: {key}", "invalid_request_error",
                                             key, key), 401)
    if cfg.fail_rate and st.fault_rng.random() < cfg.fail_rate:
        st.stats.add(model, errors=1)
        response = json_response(wire.fault_body(cfg.fail_status), cfg.fail_status)
        if cfg.retry_after_s is not None:
            response.headers["retry-after"] = str(cfg.retry_after_s)
        return response
    return None


@dataclass(slots=True)
class Opened:
    """A generation request that passed the common checks."""

    st: SimState
    body: dict[str, Any]
    model: str  # as the client named it, options included
    base: str  # without its options
    cfg: SimConfig
    n: int  # choices to draw (after `max_n`)
    transport: faults.Transport | None  # for connection faults

    @property
    def stream(self) -> bool:
        """A stream was asked for and will be served (`json_to_stream` answers with JSON)."""
        return bool(self.body.get("stream")) and not self.cfg.json_to_stream


async def open_model_request(request: Request) -> tuple[SimState, dict[str, Any], str, str, SimConfig] | Response:
    """Read any request naming a model: the body, the model, its options (or the error to send)."""
    st: SimState = request.app.state.sim
    body = await read_json(request)
    if body is None:
        st.stats.add("", requests=1)
        return error(st, "", "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        st.stats.add("", requests=1)
        return error(st, "", "'model' is required", "model", "missing_required_parameter")
    st.stats.add(model, requests=1)
    try:
        base, cfg = st.config_for(model)
    except ValueError as exc:
        return error(st, model, str(exc), "model", "invalid_model_option")
    return st, body, model, base, cfg


async def open_generation(request: Request) -> Opened | Response:
    """Read a generation request (chat or completions): body, model, options, `n`, then the gate."""
    opened = await open_model_request(request)
    if isinstance(opened, Response):
        return opened
    st, body, model, base, cfg = opened
    n = body.get("n")
    n = 1 if n is None else n
    if not _count_ok(n):
        return error(st, model, f"n must be an integer between 1 and {MAX_N}", "n", "invalid_value")
    if n > 1 and cfg.no_n:
        return error(st, model, "n > 1 is not supported by this model", "n", "unsupported_parameter")
    if cfg.max_n is not None:
        n = min(n, cfg.max_n)
    blocked = await gate(st, request, model, cfg)
    if blocked is not None:
        return blocked
    return Opened(st, body, model, base, cfg, n, request.scope.get(faults.TRANSPORT))


def _count_ok(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_N


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options") or {}
    return bool(options.get("include_usage")) if isinstance(options, dict) else False


def stream(op: Opened, events: list[Event], n_choices: int, prompt_tokens: int,
           completion_tokens: int) -> Response:
    gen = _sse(op, events, n_choices, prompt_tokens, completion_tokens)
    return SSEResponse(gen, media_type="text/event-stream",
                       headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


async def _sse(op: Opened, events: list[Event], n_choices: int, prompt_tokens: int,
               completion_tokens: int) -> AsyncIterator[bytes]:
    st, model, cfg = op.st, op.model, op.cfg
    events = faults.shape_events(cfg, events)
    if cfg.truncate_stream or cfg.huge_body_mb:
        completion_tokens = sum(carried for _, carried, _ in events)
    st.stats.add(model, streams=1, choices=n_choices)
    delay = cfg.stream_delay_ms / 1000.0
    malformed_at = len(events) // 2 if cfg.malformed_chunk else -1
    reset_at = len(events) // 2 if cfg.reset_mid_body else -1
    sent = 0
    finished = False
    try:
        for i, (event, carried, is_content) in enumerate(events):
            if i == reset_at:
                await faults.reset(op.transport)
                return
            if is_content and delay:
                await asyncio.sleep(delay)
            parts = [faults.MALFORMED] if i == malformed_at else []
            async for piece in faults.paced(cfg, iter(parts + [faults.frame(cfg, event)])):
                yield piece
            sent += carried  # resumed: the chunk went out
        st.stats.billed(model, prompt_tokens, completion_tokens)
        finished = True
        tail = faults.done(cfg)
        async for piece in faults.paced(cfg, iter([tail] if tail else [])):
            yield piece
    finally:
        if not finished:
            st.stats.billed(model, prompt_tokens, sent, streams_cancelled=1,
                            completion_tokens_sent_cancelled=sent)


def answer(op: Opened, body: dict[str, Any], n_choices: int, prompt_tokens: int,
           completion_tokens: int) -> Response:
    """A non-stream answer, billed (as generated: `huge_body_mb` filler included)."""
    if op.cfg.huge_body_mb:
        completion_tokens += faults.filler(op.cfg)[1]
    op.st.stats.billed(op.model, prompt_tokens, completion_tokens, choices=n_choices)
    return faults.json_body_response(op.cfg, faults.shape_body(op.cfg, body), op.transport)
