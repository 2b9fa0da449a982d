"""The simulator's HTTP surface (Starlette) and the helpers that serve it.

Endpoints: POST /v1/chat/completions, /v1/completions, /v1/embeddings (each also without
/v1), GET /v1/models,
GET /stats, POST /stats/reset, GET|POST /control, POST /reward, POST /classify,
POST /pooling, GET /health. There is no /v1/responses (a 404), as with llama.cpp and most
OpenAI-compatible servers.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from itsproxy.proxy.metering import tokens

from . import faults, replies, verifier, wire
from . import model as sim_model
from .completions import BadParam, completions, stops_of
from .config import SimConfig
from .embeddings import embeddings
from .questions import content_text
from .replies import error, gate, json_response, read_json
from .state import SimState, Stats

__all__ = ["SimState", "Stats", "create_app"]


def _cut(choice: sim_model.Choice, stops: list[str]) -> sim_model.Choice:
    """`stop`: the reply is cut before the first stop string (what vLLM and OpenAI do)."""
    text = choice.message.get("content")
    if not isinstance(text, str):
        return choice
    cuts = [text.find(s) for s in stops if s in text]
    if cuts:
        choice.message = {**choice.message, "content": text[:min(cuts)]}
    return choice


async def chat_completions(request: Request) -> Response:
    op = await replies.open_generation(request)
    if isinstance(op, Response):
        return op
    st, body, model, cfg = op.st, op.body, op.model, op.cfg
    try:
        view = sim_model.read_request(body, op.base)
    except (TypeError, ValueError) as exc:
        return error(st, model, str(exc), "messages", "invalid_value")

    try:
        stops = stops_of(body.get("stop"))
    except BadParam as exc:
        return error(st, model, str(exc), exc.param, "invalid_value")
    choices = [_cut(c, stops) for c in sim_model.respond(cfg, view, op.n, st.stream_rng)]
    tools = body.get("tools")
    prompt_tokens = tokens.count_messages(view.messages, tools if isinstance(tools, list) else None)
    completion_tokens = sum(tokens.count_message(c.message) for c in choices)
    usage = None if cfg.no_usage else wire.usage_of(prompt_tokens, completion_tokens)
    logprobs = bool(body.get("logprobs"))
    top_k = body.get("top_logprobs") or 0
    top_k = min(int(top_k), 20) if isinstance(top_k, int) else 0
    cid, created = wire.new_id(), int(time.time())

    if op.stream:
        events = wire.stream_events(cid, created, model, choices, usage, replies.include_usage(body),
                                    logprobs, top_k)
        return replies.stream(op, events, len(choices), prompt_tokens, completion_tokens)
    return replies.answer(op, wire.completion(cid, created, model, choices, usage, logprobs, top_k),
                          len(choices), prompt_tokens, completion_tokens)


# ---------------------------------------------------------------- reward endpoints


def _inputs(body: dict[str, Any]) -> list[str] | None:
    raw = body.get("input")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return raw
    return None


async def _reward_entry(request: Request) -> tuple[SimState, Any, str, Any, Response | None]:
    """The parsed call; when the response (last) is set, it is the error to send and the rest is unusable."""
    st: SimState = request.app.state.sim
    body = await read_json(request)
    named = body.get("model") if body else None
    model = named if isinstance(named, str) else "reward"
    st.stats.add(model, reward_requests=1)
    if body is None:
        return st, None, model, None, error(st, model, "the request body must be a JSON object")
    try:
        _, cfg = st.config_for(model)
    except ValueError as exc:
        return st, body, model, None, error(st, model, str(exc), "model", "invalid_model_option")
    return st, body, model, cfg, await gate(st, request, model, cfg)


async def reward(request: Request) -> Response:
    st, body, model, cfg, err = await _reward_entry(request)
    if err is not None:
        return err
    candidates = body.get("candidates")
    if not isinstance(candidates, list):
        return error(st, model, "'candidates' must be a list of strings", "candidates")
    texts = [_candidate_text(c) for c in candidates]
    salt = body.get("seed")
    chain = verifier.prompt_chain(body.get("prompt"))
    if chain is not None:
        return json_response({"scores": [verifier.chain_reward(cfg, chain, t, salt) for t in texts]})
    question = verifier.prompt_question(body.get("prompt"))
    return json_response({"scores": [verifier.reward_score(cfg, question, t, salt) for t in texts]})


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
        return error(st, model, "'input' must be a string or a list of strings", "input")
    probs = [verifier.classify_text(cfg, text, body.get("seed")) for text in inputs]
    if kind == "classify":
        data = [{"index": i, "label": "correct" if p >= 0.5 else "incorrect",
                 "probs": [round(1.0 - p, 6), p], "num_classes": 2} for i, p in enumerate(probs)]
    else:
        data = [{"index": i, "object": "pooling", "data": [p]} for i, p in enumerate(probs)]
    prompt_tokens = sum(tokens.count_text(t) for t in inputs)
    st.stats.billed(model, prompt_tokens, 0)  # what a vLLM pooling endpoint bills
    return json_response({"id": wire.new_id(f"{kind}-"), "object": "list", "created": int(time.time()), "model": model,
                  "data": data, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens,
                                          "completion_tokens": 0, "prompt_tokens_details": None}})


# ---------------------------------------------------------------- small endpoints


async def models(request: Request) -> Response:
    return json_response({"object": "list", "data": [{"id": "sim", "object": "model", "created": 0,
                                              "owned_by": "itsproxy-simulator"}]})


async def stats(request: Request) -> Response:
    return json_response(request.app.state.sim.stats.snapshot())


async def stats_reset(request: Request) -> Response:
    st: SimState = request.app.state.sim
    st.stats.reset()
    return json_response(st.stats.snapshot())


async def control(request: Request) -> Response:
    st: SimState = request.app.state.sim
    if request.method == "POST":
        changes = await read_json(request)
        if changes is None:
            return json_response(wire.error_body("the request body must be a JSON object"), 400)
        try:
            st.set_config(st.config.updated(changes))
        except (TypeError, ValueError) as exc:
            return json_response(wire.error_body(str(exc), param="control"), 400)
    return json_response(st.config.to_dict())


async def health(request: Request) -> Response:
    return json_response({"status": "ok"})


class SimApp(Starlette):
    """Starlette that keeps the server's transport in the scope, for connection faults."""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            faults.remember_transport(scope, send)
        await super().__call__(scope, receive, send)


def create_app(config: SimConfig | None = None) -> Starlette:
    post = ["POST"]
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=post),
        Route("/chat/completions", chat_completions, methods=post),
        Route("/v1/completions", completions, methods=post),
        Route("/completions", completions, methods=post),
        Route("/v1/embeddings", embeddings, methods=post),
        Route("/embeddings", embeddings, methods=post),
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
    app = SimApp(routes=routes)
    app.state.sim = SimState(config or SimConfig())
    return app
