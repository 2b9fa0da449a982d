"""POST /v1/completions: the legacy Completions API (base models, eval harnesses) in and out.

On a passthrough route the body goes to the upstream's /completions as it came.
On a scaling route the prompt becomes the conversation the strategies see (one
user turn); a `completion`-mode model then gets it back as a raw prompt
(proxy/upstream/completion_mode.py), a chat model as a user message. `logprobs: k`
asks the candidates for chat logprobs and is rendered back in this API's shape;
`echo` prepends the prompt; `best_of`/`n` return the route's best distinct answers.
"""

from __future__ import annotations

from typing import Any

from itsproxy.proxy.errors import ApiError, bad_request
from itsproxy.proxy.http import fields
from itsproxy.proxy.http.relay import ChunkRelay
from itsproxy.proxy.http.sse import DONE, sse
from itsproxy.proxy.outcome import Outcome, new_id
from itsproxy.proxy.params import split_params
from itsproxy.proxy.surface import Call
from itsproxy.proxy.upstream.replies import TEXT

OWN = frozenset({"model", "prompt", "stream", "stream_options", "n", "best_of", "its", "echo", "logprobs"})


def _prompt(value: Any) -> str | list[Any]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return value  # token ids
    if isinstance(value, list) and value and all(
            isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p) for p in value):
        return value
    raise bad_request("'prompt' must be a string, an array of strings, or token ids", param="prompt")


def _int(body: dict[str, Any], key: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        raise bad_request(f"'{key}' must be an integer >= {lo}" + (f" and <= {hi}" if hi else ""), param=key)
    return v


def parse(body: Any, drop_params: bool) -> tuple[Call, dict[str, Any]]:
    """The Call, and the body forwarded as-is on passthrough."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required", param="model")
    prompt = _prompt(body.get("prompt"))
    n, best_of, logprobs = _int(body, "n", 1, 128), _int(body, "best_of", 1, 128), _int(body, "logprobs", 0, 20)
    if best_of is not None and n is not None and best_of < n:
        raise bad_request("'best_of' must be at least 'n'", param="best_of")
    stream, echo = body.get("stream") or False, body.get("echo") or False
    if not isinstance(stream, bool) or not isinstance(echo, bool):
        bad = "stream" if not isinstance(stream, bool) else "echo"
        raise bad_request(f"'{bad}' must be a boolean", param=bad)
    opts, its = body.get("stream_options") or {}, fields.its_options(body.get("its"))
    if not isinstance(opts, dict):
        raise bad_request("'stream_options' must be an object", param="stream_options")
    params = split_params(body, OWN, drop_params)
    if logprobs is not None:  # the strategies draw chat-shaped candidates: ask for chat logprobs
        params.update(logprobs=True, top_logprobs=max(1, logprobs))
    text = prompt if isinstance(prompt, str) else prompt[0] if len(prompt) == 1 and isinstance(prompt[0], str) else None
    call = Call(model=model, messages=[{"role": "user", "content": text if text is not None else ""}], params=params,
                stream=stream, include_usage=bool(opts.get("include_usage")), n=best_of or n, its=its,
                prompt=text, echo=echo, returned=n or 1, text_logprobs=logprobs)
    forwarded = {k: v for k, v in body.items() if k != "its" and (k in OWN or k in params)}
    return call, forwarded


def text_logprobs(chat: dict[str, Any] | None, offset: int) -> dict[str, Any] | None:
    """Chat logprobs in the Completions shape (tokens, token_logprobs, top_logprobs, text_offset)."""
    content = (chat or {}).get("content")
    if not isinstance(content, list):
        return None
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for item in content:
        out["tokens"].append(item.get("token"))
        out["token_logprobs"].append(item.get("logprob"))
        out["top_logprobs"].append({t["token"]: t["logprob"] for t in item.get("top_logprobs") or []})
        out["text_offset"].append(offset)
        offset += len(item.get("token") or "")
    return out


class CompletionsSurface:
    wire = TEXT

    def __init__(self, drop_params: bool = False) -> None:
        self.drop_params = drop_params

    def parse(self, body: Any) -> Call:
        call, forwarded = parse(body, self.drop_params)
        call.native = forwarded
        return call

    def upstream_body(self, call: Call) -> dict[str, Any]:
        return {k: v for k, v in call.native.items() if k not in ("stream", "stream_options")}

    def check_scaling(self, call: Call) -> None:
        if call.prompt is None:
            raise ApiError(400, "a scaling route takes one prompt (a string) per request; send several requests, "
                           "or use a passthrough route for batched prompts", param="prompt")

    def _choices(self, outcome: Outcome, call: Call) -> list[dict[str, Any]]:
        head = call.prompt if call.echo and call.prompt else ""
        out = []
        for i, c in enumerate(outcome.ranked(call.returned or 1)):
            logprobs = text_logprobs(c.sample.logprobs, len(head)) if call.text_logprobs is not None else None
            choice = {"text": head + (c.text or ""), "index": i, "finish_reason": c.sample.finish_reason or "stop",
                      "logprobs": logprobs}
            out.append(choice)
        return out

    def render(self, outcome: Outcome, call: Call) -> dict[str, Any]:
        return {"id": outcome.id.replace("chatcmpl", "cmpl"), "object": "text_completion", "created": outcome.created,
                "model": outcome.model, "choices": self._choices(outcome, call), "usage": outcome.usage(),
                "its": outcome.its()}

    def render_passthrough(self, resp: dict[str, Any], its: dict[str, Any], usage: dict[str, int]) -> dict[str, Any]:
        return {**resp, "usage": {**(resp.get("usage") or {}), **usage}, "its": its}

    def scaling_stream(self, call: Call) -> CompletionsScalingStream:
        return CompletionsScalingStream(self, call)

    def relay(self, call: Call) -> ChunkRelay:
        return ChunkRelay(call.include_usage)


class CompletionsScalingStream:
    def __init__(self, surface: CompletionsSurface, call: Call) -> None:
        self.surface, self.call = surface, call
        self.id, self.created = new_id("cmpl")

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.call.model,
                "choices": choices, **extra}

    def opening(self) -> list[bytes]:
        return []  # the Completions API has no role chunk: keep-alive comments hold the line

    def answer(self, outcome: Outcome) -> list[bytes]:
        choices = self.surface._choices(outcome, self.call)
        parts = [sse(self._chunk([{**c, "finish_reason": None}])) for c in choices]
        final = self._chunk([{"text": "", "index": c["index"], "logprobs": None, "finish_reason": c["finish_reason"]}
                             for c in choices])
        if self.call.include_usage:
            parts.append(sse(final))
            final = self._chunk([], usage=outcome.usage())
        final["its"] = outcome.its()
        return [*parts, sse(final), DONE]

    def error(self, err: ApiError) -> list[bytes]:
        return [sse(err.body())]
