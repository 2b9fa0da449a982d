"""OpenAI wire shapes built from sampled choices: completions, SSE chunks, logprobs,
errors. Pure (no I/O); plain dicts only, for speed."""

from __future__ import annotations

import math
import os
from typing import Any

from itsproxy.proxy.metering import tokens

from .model import Choice
from .questions import NUMBER_RE

FINGERPRINT = "fp_itsproxy_sim"
CHUNK_TOKENS = 3  # content tokens per streamed chunk
ALTERNATIVES = (
    " the", " a", ".", ",", " is", " and", "\n", " to", " of", " I", " it", " we", " so",
    " that", ":", " then", " this", " in", " be", " as", " on", " with",
)
FAULTS = {
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached (simulated)."),
    500: ("server_error", "internal_error", "The server had an error while processing your request (simulated)."),
    502: ("server_error", "bad_gateway", "Bad gateway (simulated)."),
    503: ("server_error", "service_unavailable", "The server is overloaded (simulated)."),
}


def new_id(prefix: str = "chatcmpl-") -> str:
    return prefix + os.urandom(12).hex()


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def fault_body(status: int) -> dict[str, Any]:
    type_, code, message = FAULTS.get(status, ("server_error" if status >= 500 else "invalid_request_error",
                                               f"http_{status}", f"Simulated failure (HTTP {status})."))
    return error_body(message, type_, None, code)


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# ---------------------------------------------------------------- tokens and logprobs


def token_pieces(text: str) -> list[bytes]:
    """The content's tokens (as bytes), the same tokens `tokens.count_text` counts."""
    return tokens.token_bytes(text)


def token_logprobs(pieces: list[bytes], text: str, choice: Choice, top_k: int) -> list[dict[str, Any]]:
    rng = choice.rng
    spans = choice.spans
    if spans is None and choice.answer_p:
        last = None
        for m in NUMBER_RE.finditer(text):
            last = m.span()
        spans = [(last[0], last[1], choice.answer_p)] if last else []
    entries: list[dict[str, Any]] = []
    pos = 0
    for i, raw in enumerate(pieces):
        token = raw.decode("utf-8", "replace")
        start, pos = pos, pos + len(token)
        alt: tuple[str, float] | None = None
        k = top_k
        if i == 0 and choice.first_alt is not None:
            other, p_first = choice.first_alt
            lp = math.log(p_first)
            alt = (other, math.log(max(1.0 - p_first - 0.01, 1e-6)))
            k = max(top_k, 2)
        elif spans and (p := _span_p(spans, start, pos, token)) is not None:
            lp = math.log(min(max(p, 1e-4), 0.999))
        else:
            lp = -rng.expovariate(25.0)
        entry = {"token": token, "logprob": round(lp, 6), "bytes": list(raw), "top_logprobs": []}
        if k > 0:
            entry["top_logprobs"] = _top(token, raw, lp, alt, k)
        entries.append(entry)
    return entries


def _span_p(spans: list[tuple[int, int, float]], start: int, end: int, token: str) -> float | None:
    """The probability of the scored number a digit token belongs to, if any."""
    if not any(c.isdigit() for c in token):
        return None
    for lo, hi, p in spans:
        if start < hi and end > lo:
            return p
    return None


def _top(token: str, raw: bytes, lp: float, alt: tuple[str, float] | None, k: int) -> list[dict[str, Any]]:
    top = [{"token": token, "logprob": round(lp, 6), "bytes": list(raw)}]
    rest = 1.0 - math.exp(lp)
    if alt is not None and len(top) < k:
        top.append({"token": alt[0], "logprob": round(alt[1], 6), "bytes": list(alt[0].encode())})
        rest -= math.exp(alt[1])
    rest = max(rest, 1e-9)
    j = 1
    for cand in ALTERNATIVES:
        if len(top) >= k:
            break
        if cand == token:
            continue
        top.append({"token": cand, "logprob": round(max(math.log(rest * 0.5**j), -50.0), 6),
                    "bytes": list(cand.encode())})
        j += 1
    return top


def _logprobs(choice: Choice, top_k: int) -> dict[str, Any]:
    text = choice.message.get("content")
    if text is None:
        return {"content": None, "refusal": None}
    return {"content": token_logprobs(token_pieces(text), text, choice, top_k), "refusal": None}


# ---------------------------------------------------------------- responses


def completion(cid: str, created: int, model: str, choices: list[Choice], usage: dict | None,
               logprobs: bool, top_k: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {"index": i, "message": c.message, "logprobs": _logprobs(c, top_k) if logprobs else None,
             "finish_reason": c.finish_reason}
            for i, c in enumerate(choices)
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def stream_events(cid: str, created: int, model: str, choices: list[Choice], usage: dict | None,
                  include_usage: bool, logprobs: bool, top_k: int) -> list[tuple[dict[str, Any], int, bool]]:
    """The chunks of a streamed completion, as (chunk, completion tokens it carries, is a
    content chunk). Choices are interleaved round-robin like OpenAI does."""

    def chunk(choice_obj: dict[str, Any]) -> dict[str, Any]:
        c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
             "system_fingerprint": FINGERPRINT, "choices": [choice_obj]}
        if include_usage:
            c["usage"] = None
        return c

    heads: list[tuple[dict[str, Any], int, bool]] = []
    bodies: list[list[tuple[dict[str, Any], int, bool]]] = []
    for i, c in enumerate(choices):
        calls = c.message.get("tool_calls")
        parts: list[tuple[dict[str, Any], int, bool]] = []
        if calls:
            call = calls[0]
            fn = call["function"]
            head = {"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": call["id"], "type": "function", "function": {"name": fn["name"], "arguments": ""}}]}
            heads.append((chunk({"index": i, "delta": head, "logprobs": None, "finish_reason": None}),
                          tokens.count_text(fn["name"]) + 3, False))
            pieces = token_pieces(fn["arguments"])
            for g in range(0, len(pieces), CHUNK_TOKENS):
                group = pieces[g:g + CHUNK_TOKENS]
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": b"".join(group).decode()}}]}
                parts.append((chunk({"index": i, "delta": delta, "logprobs": None, "finish_reason": None}),
                              len(group), True))
        else:
            heads.append((chunk({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None}), 0, False))
            text = c.message.get("content") or ""
            pieces = token_pieces(text)
            entries = token_logprobs(pieces, text, c, top_k) if logprobs else None
            for g in range(0, len(pieces), CHUNK_TOKENS):
                group = pieces[g:g + CHUNK_TOKENS]
                lp = {"content": entries[g:g + CHUNK_TOKENS], "refusal": None} if entries is not None else None
                text_delta: dict[str, Any] = {"content": b"".join(group).decode("utf-8", "replace")}
                parts.append((chunk({"index": i, "delta": text_delta, "logprobs": lp, "finish_reason": None}),
                              len(group), True))
        # Each choice finishes as soon as its own content is out, as OpenAI and vLLM
        # stream n choices: a short answer is done before a long one.
        parts.append((chunk({"index": i, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason}),
                      0, False))
        bodies.append(parts)

    events = list(heads)
    for step in range(max((len(b) for b in bodies), default=0)):
        for parts in bodies:
            if step < len(parts):
                events.append(parts[step])
    if include_usage and usage is not None:
        final = chunk({})
        final["choices"] = []
        final["usage"] = usage
        events.append((final, 0, False))
    return events
