"""The request body: validated, and cut down to an explicit allow-list of
OpenAI Chat Completions parameters. A client can never steer where or how the
proxy calls upstream (and so where its keys go)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from itsproxy.proxy.errors import ApiError, bad_request

# Forwarded upstream as given (after type checks below).
FORWARD = frozenset({
    "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "max_tokens", "max_completion_tokens",
    "presence_penalty", "response_format", "seed", "stop", "temperature", "top_p", "tools", "tool_choice",
    "parallel_tool_calls", "user", "reasoning_effort", "functions", "function_call", "modalities",
    "prediction", "audio", "service_tier", "verbosity", "web_search_options", "metadata", "store",
})
# Read by the proxy itself.
OWN = frozenset({"model", "messages", "stream", "stream_options", "n", "its"})
# Keys that would change where or how the proxy calls upstream: named in the error on purpose.
FORBIDDEN = frozenset({
    "api_base", "base_url", "api_key", "api_version", "extra_headers", "headers", "custom_llm_provider",
    "mock_response", "organization", "deployment_id", "timeout", "num_retries", "max_retries",
    "litellm_params", "model_list", "aws_access_key_id", "aws_secret_access_key", "vertex_credentials",
    "azure_ad_token", "input_cost_per_token", "output_cost_per_token", "proxy", "extra_body", "extra_query",
})
ITS_KEYS = frozenset({"n"})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    include_usage: bool = False
    n: int | None = None  # the client's own n (passthrough forwards it)
    its: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # allow-listed, forwarded

    def upstream_body(self) -> dict[str, Any]:
        body = dict(self.params)
        body["messages"] = self.messages
        if self.n is not None:
            body["n"] = self.n
        return body


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> None:
    v = body.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi):
        raise bad_request(f"'{key}' must be a number between {lo} and {hi}", param=key)


def _int(body: dict[str, Any], key: str, lo: int) -> None:
    v = body.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
        raise bad_request(f"'{key}' must be an integer >= {lo}", param=key)


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise bad_request(f"messages[{i}] must be an object with a valid 'role'", param=f"messages[{i}]")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_request(f"messages[{i}].content must be a string or an array", param=f"messages[{i}].content")
    return value


def parse_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for key in body:
        if key in FORBIDDEN:
            raise bad_request(f"parameter '{key}' is not allowed: the proxy decides where and how it calls "
                              "upstream", param=key, code="forbidden_parameter")
        if key not in FORWARD and key not in OWN:
            raise bad_request(f"unsupported parameter '{key}'", param=key, code="unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required", param="model")
    messages = _messages(body.get("messages"))
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
    if "tools" in body and body["tools"] is not None and not isinstance(body["tools"], list):
        raise bad_request("'tools' must be an array", param="tools")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", param="stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise bad_request("'stream_options' must be an object", param="stream_options")
    its = body.get("its") or {}
    if not isinstance(its, dict):
        raise bad_request("'its' must be an object", param="its")
    for key in its:
        if key not in ITS_KEYS:
            raise bad_request(f"unknown its option '{key}'", param=f"its.{key}")
    if "n" in its:
        _int(its, "n", 1)
    params = {k: v for k, v in body.items() if k in FORWARD and v is not None}
    return ChatRequest(model=model, messages=messages, stream=stream,
                       include_usage=bool(opts.get("include_usage")), n=body.get("n"), its=its, params=params)


def check_its_n(req: ChatRequest, max_n: int, default_n: int) -> int:
    n = req.its.get("n", default_n)
    if n > max_n:
        raise ApiError(400, f"its.n={n} is above this route's limit of {max_n}", param="its.n",
                       code="n_above_limit")
    return n
