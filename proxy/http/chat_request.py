"""The request body: validated, and cut down to an explicit allow-list of
OpenAI Chat Completions parameters. A client can never steer where or how the
proxy calls upstream (and so where its keys go)."""

from __future__ import annotations

from typing import Any

from itsproxy.proxy.errors import bad_request
from itsproxy.proxy.http import fields
from itsproxy.proxy.params import OWN, split_params
from itsproxy.proxy.surface import Call


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> None:
    v = body.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi):
        raise bad_request(f"'{key}' must be a number between {lo} and {hi}", param=key)


def _int(body: dict[str, Any], key: str, lo: int) -> None:
    v = body.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
        raise bad_request(f"'{key}' must be an integer >= {lo}", param=key)


def parse_request(body: Any, drop_params: bool = False) -> Call:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    params = split_params(body, OWN, drop_params)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required", param="model")
    messages = fields.messages(body.get("messages"))
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "frequency_penalty", -2, 2)
    _number(body, "presence_penalty", -2, 2)
    _int(body, "n", 1)
    _int(body, "max_tokens", 1)
    _int(body, "max_completion_tokens", 1)
    _int(body, "top_logprobs", 0)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_request("'seed' must be an integer", param="seed")
    fields.tools(body.get("tools"))
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", param="stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise bad_request("'stream_options' must be an object", param="stream_options")
    its = fields.its_options(body.get("its"))
    n = body.get("n")
    return Call(model=model, messages=messages, stream=stream, include_usage=bool(opts.get("include_usage")),
                n=n, its=its, params=params, returned=n or 1)
