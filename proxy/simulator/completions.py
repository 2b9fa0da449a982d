"""`POST /v1/completions`: the legacy Completions API on the same noisy model as chat.

How the model reads a prompt: the question is the LAST "What is A + B?" in the text, so a
few-shot prompt ("Q: What is 2 + 3?\\nA: 5\\n\\nQ: What is 17 + 25?\\nA:") is answered for its
final question. A prompt that ends in an answer cue ("A:", "Answer:", "Sum:", "=") is answered
like a few-shot example, a bare " 42\\n"; any other prompt gets the chat model's sentence.

Parameters and the choices made:
- `prompt`: a string, a list of strings, a list of token ids or a list of lists of token ids
  (o200k_base ids); prompt i's choices have indices i*n .. i*n+n-1.
- `best_of` is served: best_of draws per prompt, the n with the highest mean token logprob are
  returned (best first); every draw is billed, as OpenAI does. `best_of` > n with `stream` is a 400.
- `echo` prepends the prompt; with `logprobs` the prompt's tokens are scored too (first one null),
  and the digits of an answer written after the last question get the model's probability of that
  answer, so `echo` + `max_tokens: 0` scores a candidate answer the way lm-eval does.
- `logprobs` (0-5): top_logprobs holds the sampled token plus alternatives, max(logprobs, 1) entries.
- `max_tokens`: no default limit (like llama.cpp; OpenAI's is 16); past it, finish_reason "length".
- `stop`: a string or up to 4; the text is cut before the first stop string (finish_reason "stop").
- `suffix`: accepted (a string or null) and not used: the simulated answer does not depend on it.
- `seed`, `temperature`, `n`, `stream`, `stream_options.include_usage` as in chat; usage counts
  tokens with the chat tokenizer, and `/stats` bills exactly what usage says.
"""

from __future__ import annotations

import random
import time
from typing import Any

import tiktoken
from starlette.requests import Request
from starlette.responses import Response

from itsproxy.proxy.metering import tokens

from . import model as sim_model
from . import replies, text_wire, wire
from .config import SimConfig
from .questions import QUESTION_RE, last_number
from .replies import MAX_N, Opened, error
from .text_wire import Entry, Row

MAX_PROMPTS = 256
MAX_DRAWS = 1024  # prompts x best_of
MAX_LOGPROBS = 5


class BadParam(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


async def completions(request: Request) -> Response:
    op = await replies.open_generation(request)
    if isinstance(op, Response):
        return op
    try:
        return _serve(op)
    except BadParam as exc:
        return error(op.st, op.model, str(exc), exc.param, "invalid_value")


def _serve(op: Opened) -> Response:
    body, cfg = op.body, op.cfg
    prompts, prompt_tokens = read_prompts(body.get("prompt"))
    asked_n = body.get("n") or 1
    best_of = _int_param(body, "best_of", 1, MAX_N, asked_n)
    if best_of < asked_n:
        raise BadParam("best_of", "best_of must be greater than or equal to n")
    draws = op.n if best_of == asked_n else best_of
    if draws > 1 and cfg.no_n:
        raise BadParam("best_of", "best_of > 1 is not supported by this model")
    if len(prompts) * draws > MAX_DRAWS:
        raise BadParam("prompt", f"at most {MAX_DRAWS} completions (prompts x best_of) per request")
    stream = op.stream
    if stream and draws > op.n:
        raise BadParam("best_of", "best_of > n cannot be used with stream")
    max_tokens = _optional_int(body, "max_tokens", 0)
    logprobs = _optional_int(body, "logprobs", 0, MAX_LOGPROBS)
    stops = stops_of(body.get("stop"))
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise BadParam("echo", "echo must be a boolean")
    if body.get("suffix") is not None and not isinstance(body.get("suffix"), str):
        raise BadParam("suffix", "suffix must be a string")

    rows: list[Row] = []
    completion_tokens = 0
    for i, prompt in enumerate(prompts):
        try:
            view = sim_model.read_prompt(prompt, body, op.base)
        except (TypeError, ValueError) as exc:
            raise BadParam("temperature", str(exc)) from None
        drawn = _draw(cfg, view, draws, op.st.stream_rng, max_tokens, stops, logprobs)
        completion_tokens += sum(tokens.count_text(text) for text, _, _, _ in drawn)
        if draws > op.n:
            drawn.sort(key=lambda d: -d[3])
        echo_entries = _echo_entries(cfg, view, prompt, logprobs) if echo and logprobs is not None else None
        for j, (text, finish, entries, _) in enumerate(drawn[:op.n]):
            rows.append(Row(i * op.n + j, prompt if echo else "", echo_entries, text,
                            entries if logprobs is not None else None, finish))

    usage = None if cfg.no_usage else wire.usage_of(prompt_tokens, completion_tokens)
    cid, created = wire.new_id("cmpl-"), int(time.time())
    if stream:
        events = text_wire.stream_events(cid, created, op.model, rows, usage, replies.include_usage(body))
        return replies.stream(op, events, len(rows), prompt_tokens, completion_tokens)
    return replies.answer(op, text_wire.completion(cid, created, op.model, rows, usage), len(rows),
                          prompt_tokens, completion_tokens)


def _draw(cfg: SimConfig, view: sim_model.View, draws: int, stream_rng: random.Random,
          max_tokens: int | None, stops: list[str], logprobs: int | None
          ) -> list[tuple[str, str, list[Entry], float]]:
    """`draws` samples as (text, finish_reason, token logprobs, mean logprob)."""
    out = []
    for choice in sim_model.respond(cfg, view, draws, stream_rng):
        text, finish = shape_text(view.lead + (choice.message.get("content") or ""), max_tokens, stops)
        pieces = wire.token_pieces(text)
        entries = wire.token_logprobs(pieces, text, choice, max(logprobs or 0, 1))
        mean = sum(e["logprob"] for e in entries) / len(entries) if entries else 0.0
        out.append((text, finish if max_tokens != 0 else "length", entries, mean))
    return out


def shape_text(text: str, max_tokens: int | None, stops: list[str]) -> tuple[str, str]:
    """The text a generation with these stops and token limit gives, and its finish_reason."""
    cuts = [text.find(s) for s in stops if s in text]
    if cuts:
        text = text[:min(cuts)]
    if max_tokens is not None:
        pieces = wire.token_pieces(text)
        if len(pieces) > max_tokens:
            return b"".join(pieces[:max_tokens]).decode("utf-8", "replace"), "length"
    return text, "stop"


def _echo_entries(cfg: SimConfig, view: sim_model.View, prompt: str, logprobs: int) -> list[Entry]:
    """The prompt's own token logprobs: an answer after the last question is scored by the
    model's probability of it; the first token has none."""
    answer_p = None
    if view.question is not None:
        tail = prompt[_last_question_end(prompt):]
        value = last_number(tail)
        if value is not None:
            answer_p = sim_model.probability_of(cfg, view, value)
    rng = random.Random(f"echo|{cfg.seed}|{prompt}")
    choice = sim_model.Choice({"role": "user", "content": prompt}, "", rng, answer_p=answer_p)
    entries = wire.token_logprobs(wire.token_pieces(prompt), prompt, choice, max(logprobs, 1))
    if entries:
        entries[0] = {**entries[0], "logprob": None, "top_logprobs": []}
    return entries


def _last_question_end(prompt: str) -> int:
    end = 0
    for m in QUESTION_RE.finditer(prompt):
        end = m.end()
    return end


# ---------------------------------------------------------------- reading parameters


def read_prompts(raw: Any) -> tuple[list[str], int]:
    """The prompts as text, and their prompt tokens (token-id prompts count their ids)."""
    if isinstance(raw, str):
        return [raw], tokens.count_text(raw)
    if isinstance(raw, list) and raw and len(raw) <= MAX_PROMPTS:
        if all(isinstance(x, str) for x in raw):
            return list(raw), sum(tokens.count_text(x) for x in raw)
        if all(_is_id(x) for x in raw):
            return [_decode(raw)], len(raw)
        if all(isinstance(x, list) and x and all(_is_id(t) for t in x) for x in raw):
            return [_decode(x) for x in raw], sum(len(x) for x in raw)
    raise BadParam("prompt", "'prompt' must be a string, a list of strings, a list of token ids or a list "
                             f"of lists of token ids (at most {MAX_PROMPTS} prompts)")


def _is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _decode(ids: list[int]) -> str:
    tokens.warm()  # points tiktoken at the bundled files
    enc = tiktoken.get_encoding(tokens.ENCODING)
    if any(not 0 <= t < enc.n_vocab for t in ids):
        raise BadParam("prompt", f"token ids must be within [0, {enc.n_vocab})")
    try:
        return enc.decode(ids)
    except (KeyError, ValueError) as exc:
        raise BadParam("prompt", f"undecodable token ids: {exc}") from None


def _optional_int(body: dict[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_id(value) or value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise BadParam(name, f"{name} must be an integer {bound}")
    return value


def _int_param(body: dict[str, Any], name: str, lo: int, hi: int, default: int) -> int:
    value = _optional_int(body, name, lo, hi)
    return default if value is None else value


def stops_of(raw: Any) -> list[str]:
    """The `stop` parameter as a list (chat and completions read it alike)."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw] if raw else []
    if isinstance(raw, list) and len(raw) <= 4 and all(isinstance(s, str) for s in raw):
        return [s for s in raw if s]
    raise BadParam("stop", "stop must be a string or a list of at most 4 strings")
