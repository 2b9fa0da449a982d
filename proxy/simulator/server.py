"""The simulator's HTTP surface (Starlette) and the helpers that serve it.

Endpoints: POST /v1/chat/completions (and /chat/completions), GET /v1/models,
GET /stats, POST /stats/reset, GET|POST /control, POST /reward, POST /classify,
POST /pooling, GET /health.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncGenerator
from typing import Any, cast

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from itsproxy.proxy.metering import tokens

from . import model as sim_model
from . import verifier, wire
from .config import SimConfig, config_for_model
from .questions import content_text

STAT_KEYS = ("requests", "choices", "prompt_tokens", "completion_tokens", "total_tokens", "errors",
             "streams", "streams_cancelled", "completion_tokens_sent_cancelled", "reward_requests")
MAX_N = 128


class Stats:
    """What was served: tokens are those reported in usage (what a client is billed);
    for a stream closed early, the prompt plus the completion tokens actually sent."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = dict.fromkeys(STAT_KEYS, 0)
        self.by_model: dict[str, dict[str, int]] = {}

    def add(self, model: str, **deltas: int) -> None:
        per = self.by_model.get(model)
        if per is None:
            per = self.by_model[model] = dict.fromkeys(STAT_KEYS, 0)
        for key, value in deltas.items():
            self.total[key] += value
            per[key] += value

    def billed(self, model: str, prompt: int, completion: int, **extra: int) -> None:
        self.add(model, prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 **extra)

    def snapshot(self) -> dict[str, Any]:
        return {**self.total, "by_model": {m: dict(v) for m, v in self.by_model.items()}}


class SimState:
    def __init__(self, config: SimConfig) -> None:
        self.stats = Stats()
        self.closing = False  # set on shutdown: hanging requests give up
        self.set_config(config)

    def set_config(self, config: SimConfig) -> None:
        old = getattr(self, "config", None)
        self.config = config
        self._models: dict[str, tuple[str, SimConfig]] = {}
        if old is None or old.seed != config.seed:
            self.stream_rng = random.Random(config.seed)
            self.fault_rng = random.Random(f"faults|{config.seed}")

    def config_for(self, model: str) -> tuple[str, SimConfig]:
        hit = self._models.get(model)
        if hit is None:
            if len(self._models) > 4096:
                self._models.clear()
            hit = self._models[model] = config_for_model(self.config, model)
        return hit


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json")


class _SSEResponse(StreamingResponse):
    """Closes its generator however the response ends, so an early client close is
    always seen by the generator's `finally`."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Ours is always an async generator (starlette types it as any async iterable).
            await cast(AsyncGenerator[Any, None], self.body_iterator).aclose()


async def _read_json(request: Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError, ClientDisconnect):
        return None
    return body if isinstance(body, dict) else None


async def _gate(st: SimState, request: Request, model: str, cfg: SimConfig) -> Response | None:
    """Hang, latency and injected faults; an error response, or None to go on."""
    if cfg.hang:
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline and not st.closing and not await request.is_disconnected():
            await asyncio.sleep(0.05)
        st.stats.add(model, errors=1)
        return _json(wire.error_body("hung (simulated)", "server_error"), 504)
    if cfg.latency_ms or cfg.latency_jitter_ms:
        jitter = st.fault_rng.uniform(0, cfg.latency_jitter_ms) if cfg.latency_jitter_ms else 0.0
        await asyncio.sleep((cfg.latency_ms + jitter) / 1000.0)
    if cfg.fail_rate and st.fault_rng.random() < cfg.fail_rate:
        st.stats.add(model, errors=1)
        return _json(wire.fault_body(cfg.fail_status), cfg.fail_status)
    return None


def _error(st: SimState, model: str, message: str, param: str | None = None, code: str | None = None,
           status: int = 400) -> Response:
    st.stats.add(model, errors=1)
    return _json(wire.error_body(message, "invalid_request_error", param, code), status)


async def chat_completions(request: Request) -> Response:
    st: SimState = request.app.state.sim
    body = await _read_json(request)
    if body is None:
        st.stats.add("", requests=1)
        return _error(st, "", "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        st.stats.add("", requests=1)
        return _error(st, "", "'model' is required", "model", "missing_required_parameter")
    st.stats.add(model, requests=1)
    try:
        base, cfg = st.config_for(model)
    except ValueError as exc:
        return _error(st, model, str(exc), "model", "invalid_model_option")
    n = body.get("n")
    n = 1 if n is None else n
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
        return _error(st, model, f"n must be an integer between 1 and {MAX_N}", "n", "invalid_value")
    if n > 1 and cfg.no_n:
        return _error(st, model, "n > 1 is not supported by this model", "n", "unsupported_parameter")
    if cfg.max_n is not None:
        n = min(n, cfg.max_n)
    blocked = await _gate(st, request, model, cfg)
    if blocked is not None:
        return blocked
    try:
        view = sim_model.read_request(body, base)
    except (TypeError, ValueError) as exc:
        return _error(st, model, str(exc), "messages", "invalid_value")

    choices = sim_model.respond(cfg, view, n, st.stream_rng)
    tools = body.get("tools")
    prompt_tokens = tokens.count_messages(view.messages, tools if isinstance(tools, list) else None)
    completion_tokens = sum(tokens.count_message(c.message) for c in choices)
    usage = None if cfg.no_usage else wire.usage_of(prompt_tokens, completion_tokens)
    logprobs = bool(body.get("logprobs"))
    top_k = body.get("top_logprobs") or 0
    top_k = min(int(top_k), 20) if isinstance(top_k, int) else 0
    cid, created = wire.new_id(), int(time.time())

    if body.get("stream"):
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
        events = wire.stream_events(cid, created, model, choices, usage, include_usage, logprobs, top_k)
        gen = _stream(st, model, events, len(choices), prompt_tokens, completion_tokens, cfg.stream_delay_ms)
        return _SSEResponse(gen, media_type="text/event-stream",
                            headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
    st.stats.billed(model, prompt_tokens, completion_tokens, choices=len(choices))
    return _json(wire.completion(cid, created, model, choices, usage, logprobs, top_k))


async def _stream(st: SimState, model: str, events: list, n_choices: int, prompt_tokens: int,
                  completion_tokens: int, delay_ms: float):
    st.stats.add(model, streams=1, choices=n_choices)
    delay = delay_ms / 1000.0
    sent = 0
    finished = False
    try:
        for event, carried, is_content in events:
            if is_content and delay:
                await asyncio.sleep(delay)
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
            sent += carried  # resumed: the chunk went out
        st.stats.billed(model, prompt_tokens, completion_tokens)
        finished = True
        yield b"data: [DONE]\n\n"
    finally:
        if not finished:
            st.stats.billed(model, prompt_tokens, sent, streams_cancelled=1,
                            completion_tokens_sent_cancelled=sent)


# ---------------------------------------------------------------- reward endpoints


def _inputs(body: dict[str, Any]) -> list[str] | None:
    raw = body.get("input")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return raw
    return None


async def _reward_entry(request: Request) -> tuple[SimState, dict[str, Any], str, SimConfig, Response | None]:
    """The parsed call; when the response (last) is set, it is the error to send and the rest is unusable."""
    st: SimState = request.app.state.sim
    body = await _read_json(request)
    named = body.get("model") if body else None
    model = named if isinstance(named, str) else "reward"
    st.stats.add(model, reward_requests=1)
    if body is None:
        return st, {}, model, st.config, _error(st, model, "the request body must be a JSON object")
    try:
        _, cfg = st.config_for(model)
    except ValueError as exc:
        return st, body, model, st.config, _error(st, model, str(exc), "model", "invalid_model_option")
    return st, body, model, cfg, await _gate(st, request, model, cfg)


async def reward(request: Request) -> Response:
    st, body, model, cfg, err = await _reward_entry(request)
    if err is not None:
        return err
    candidates = body.get("candidates")
    if not isinstance(candidates, list):
        return _error(st, model, "'candidates' must be a list of strings", "candidates")
    texts = [_candidate_text(c) for c in candidates]
    question = verifier.prompt_question(body.get("prompt"))
    salt = body.get("seed")
    return _json({"scores": [verifier.reward_score(cfg, question, t, salt) for t in texts]})


def _candidate_text(candidate: Any) -> str:
    if isinstance(candidate, str):
        return candidate
    if isinstance(candidate, dict):  # a message
        return content_text(candidate.get("content"))
    return str(candidate)


async def classify(request: Request) -> Response:
    return await _pooled(request, "classify")


async def pooling(request: Request) -> Response:
    return await _pooled(request, "pooling")


async def _pooled(request: Request, kind: str) -> Response:
    st, body, model, cfg, err = await _reward_entry(request)
    if err is not None:
        return err
    inputs = _inputs(body)
    if inputs is None:
        return _error(st, model, "'input' must be a string or a list of strings", "input")
    probs = [verifier.classify_text(cfg, text, body.get("seed")) for text in inputs]
    if kind == "classify":
        data = [{"index": i, "label": "correct" if p >= 0.5 else "incorrect",
                 "probs": [round(1.0 - p, 6), p], "num_classes": 2} for i, p in enumerate(probs)]
    else:
        data = [{"index": i, "object": "pooling", "data": [p]} for i, p in enumerate(probs)]
    prompt_tokens = sum(tokens.count_text(t) for t in inputs)
    st.stats.billed(model, prompt_tokens, 0)  # what a vLLM pooling endpoint bills
    return _json({"id": wire.new_id(f"{kind}-"), "object": "list", "created": int(time.time()), "model": model,
                  "data": data, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens,
                                          "completion_tokens": 0, "prompt_tokens_details": None}})


# ---------------------------------------------------------------- small endpoints


async def models(request: Request) -> Response:
    return _json({"object": "list", "data": [{"id": "sim", "object": "model", "created": 0,
                                              "owned_by": "itsproxy-simulator"}]})


async def stats(request: Request) -> Response:
    return _json(request.app.state.sim.stats.snapshot())


async def stats_reset(request: Request) -> Response:
    st: SimState = request.app.state.sim
    st.stats.reset()
    return _json(st.stats.snapshot())


async def control(request: Request) -> Response:
    st: SimState = request.app.state.sim
    if request.method == "POST":
        changes = await _read_json(request)
        if changes is None:
            return _json(wire.error_body("the request body must be a JSON object"), 400)
        try:
            st.set_config(st.config.updated(changes))
        except (TypeError, ValueError) as exc:
            return _json(wire.error_body(str(exc), param="control"), 400)
    return _json(st.config.to_dict())


async def health(request: Request) -> Response:
    return _json({"status": "ok"})


def create_app(config: SimConfig | None = None) -> Starlette:
    post = ["POST"]
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=post),
        Route("/chat/completions", chat_completions, methods=post),
        Route("/v1/models", models, methods=["GET"]),
        Route("/models", models, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/stats/reset", stats_reset, methods=post),
        Route("/control", control, methods=["GET", "POST"]),
        Route("/health", health, methods=["GET"]),
    ]
    for prefix in ("", "/v1"):
        routes += [Route(f"{prefix}/reward", reward, methods=post),
                   Route(f"{prefix}/classify", classify, methods=post),
                   Route(f"{prefix}/pooling", pooling, methods=post)]
    app = Starlette(routes=routes)
    app.state.sim = SimState(config or SimConfig())
    return app
