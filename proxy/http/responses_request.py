"""A /v1/responses request body: checked key by key, translated into the one `Call`
every route runs (a chat conversation plus chat parameters), and the fields the
Response object echoes back.

Each key the Responses API defines is either translated to its Chat Completions
equivalent, echoed (it only describes the response), or refused with a 400 that
names it. itsproxy keeps no state: `store: true`, `previous_response_id` and
`conversation` are refused with the way round them (send the conversation in `input`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from itsproxy.proxy.errors import bad_request
from itsproxy.proxy.http.fields import its_options
from itsproxy.proxy.http.responses_items import input_messages
from itsproxy.proxy.params import FORBIDDEN
from itsproxy.proxy.surface import Call

STATELESS = "itsproxy is stateless; send the conversation in `input`"
# Keys read here; every other key is refused by name (see `_refuse`).
KNOWN = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "text", "reasoning", "max_output_tokens",
    "temperature", "top_p", "parallel_tool_calls", "metadata", "user", "stream", "store", "its",
    "previous_response_id", "conversation", "include", "top_logprobs", "truncation", "service_tier",
    "prompt_cache_key", "safety_identifier", "background", "stream_options",
})
# The same value under the same name in Chat Completions.
SAME_NAME = ("temperature", "top_p", "user", "service_tier", "prompt_cache_key", "safety_identifier")
HOSTED_TOOLS = frozenset({
    "web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11",
    "file_search", "code_interpreter", "computer_use_preview", "computer_use", "image_generation", "mcp",
    "local_shell", "shell", "apply_patch", "custom",
})
INCLUDES = frozenset({"message.output_text.logprobs", "reasoning.encrypted_content"})


@dataclass
class ResponsesRequest:
    call: Call
    echo: dict[str, Any]  # request fields the Response object repeats


def parse_responses(body: Any) -> ResponsesRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for key, value in body.items():
        if key.lower() in FORBIDDEN:
            raise bad_request(f"parameter '{key}' is not allowed: the proxy decides where and how it calls "
                              "upstream", param=key, code="forbidden_parameter")
        if key not in KNOWN and value is not None:
            _refuse(key)
    b = {k: v for k, v in body.items() if v is not None}  # an explicit null means "not given"
    _stateless(b)
    model = b.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required", param="model")
    messages = input_messages(b.get("input"))
    instructions = b.get("instructions")
    if instructions is not None:
        messages.insert(0, {"role": "system", "content": _string(instructions, "instructions")})
    params = _params(b)
    stream = b.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", param="stream")
    call = Call(model=model, messages=messages, params=params, stream=stream, its=its_options(b.get("its")))
    return ResponsesRequest(call, _echo(b, params))


def _refuse(key: str) -> None:
    raise bad_request(f"unsupported parameter '{key}' on /v1/responses: it has no Chat Completions "
                      "equivalent and itsproxy does not implement it", param=key, code="unsupported_parameter")


def _stateless(b: dict[str, Any]) -> None:
    for key in ("previous_response_id", "conversation"):
        if key in b:
            raise bad_request(f"'{key}' is not supported: {STATELESS}", param=key, code="stateless")
    store = b.get("store", False)
    if not isinstance(store, bool):
        raise bad_request("'store' must be a boolean", param="store")
    if store:
        raise bad_request(f"'store: true' is not supported: {STATELESS} (and leave `store` unset or false)",
                          param="store", code="stateless")
    if b.get("background", False) is not False:
        raise bad_request("'background' is not supported: itsproxy answers within the request", param="background",
                          code="unsupported_parameter")
    if b.get("truncation", "disabled") != "disabled":
        raise bad_request("'truncation' must be 'disabled': itsproxy never drops parts of the conversation",
                          param="truncation", code="unsupported_parameter")
    opts = b.get("stream_options", {})
    if not isinstance(opts, dict) or set(opts) - {"include_obfuscation"}:
        raise bad_request("'stream_options' may only hold include_obfuscation (itsproxy adds no obfuscation)",
                          param="stream_options")


def _params(b: dict[str, Any]) -> dict[str, Any]:
    """The chat parameters this request stands for (forwarded upstream)."""
    _number(b, "temperature", 0, 2)
    _number(b, "top_p", 0, 1)
    for key in ("user", "service_tier", "prompt_cache_key", "safety_identifier"):
        if key in b:
            _string(b[key], key)
    params = {k: b[k] for k in SAME_NAME if k in b}
    if "max_output_tokens" in b:
        params["max_tokens"] = _int(b["max_output_tokens"], "max_output_tokens", 1)
    tools = _tools(b.get("tools", []))
    if tools:
        params["tools"] = tools
        if "parallel_tool_calls" in b:  # chat refuses parallel_tool_calls without tools
            params["parallel_tool_calls"] = b["parallel_tool_calls"]
    if not isinstance(b.get("parallel_tool_calls", True), bool):
        raise bad_request("'parallel_tool_calls' must be a boolean", param="parallel_tool_calls")
    if "tool_choice" in b:
        choice = _tool_choice(b["tool_choice"])
        if tools:
            params["tool_choice"] = choice
        elif choice not in ("auto", "none"):  # without tools, auto and none mean what no tool_choice means
            raise bad_request("'tool_choice' names a tool but 'tools' declares none", param="tool_choice")
    params.update(_text(b.get("text", {})))
    effort = _reasoning(b.get("reasoning", {}))
    if effort is not None:
        params["reasoning_effort"] = effort
    params.update(_logprobs(b))
    if "metadata" in b:  # echoed, not forwarded: chat upstreams tie metadata to storage
        meta = b["metadata"]
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise bad_request("'metadata' must be an object of string values", param="metadata")
    return params


def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise bad_request("'tools' must be an array", param="tools")
    out = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise bad_request(f"'{where}' must be an object", param=where)
        kind = tool.get("type")
        if not isinstance(kind, str):
            raise bad_request(f"'{where}.type' must be a string", param=f"{where}.type")
        if kind in HOSTED_TOOLS:
            raise bad_request(f"{where}: the built-in tool '{kind}' is not supported (itsproxy runs no hosted "
                              "tools); declare a function tool {type: 'function', name, parameters} and run it "
                              "in your client", param=where, code="unsupported_tool")
        if kind != "function":
            raise bad_request(f"'{where}.type' must be 'function'", param=f"{where}.type")
        fn: dict[str, Any] = {"name": _string(tool.get("name"), f"{where}.name")}
        if tool.get("description") is not None:
            fn["description"] = _string(tool["description"], f"{where}.description")
        if tool.get("parameters") is not None:
            if not isinstance(tool["parameters"], dict):
                raise bad_request(f"'{where}.parameters' must be an object", param=f"{where}.parameters")
            fn["parameters"] = tool["parameters"]
        if tool.get("strict") is not None:
            fn["strict"] = _bool(tool["strict"], f"{where}.strict")
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(value: Any) -> Any:
    if value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        return {"type": "function", "function": {"name": _string(value.get("name"), "tool_choice.name")}}
    if isinstance(value, dict) and value.get("type") == "allowed_tools":
        tools = value.get("tools")
        if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function"
                                                  for t in tools):
            raise bad_request("'tool_choice.tools' must be an array of {type: 'function', name}",
                              param="tool_choice.tools")
        allowed = [{"type": "function", "function": {"name": _string(t.get("name"), "tool_choice.tools.name")}}
                   for t in tools]
        mode = value.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise bad_request("'tool_choice.mode' must be 'auto' or 'required'", param="tool_choice.mode")
        return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": allowed}}
    raise bad_request("'tool_choice' must be 'auto', 'none', 'required', {type: 'function', name} or "
                      "{type: 'allowed_tools', …} (hosted tools are not supported)", param="tool_choice")


def _text(value: Any) -> dict[str, Any]:
    """`text.format` as chat `response_format`, `text.verbosity` as chat `verbosity`."""
    if not isinstance(value, dict) or set(value) - {"format", "verbosity"}:
        raise bad_request("'text' must be an object with 'format' and/or 'verbosity'", param="text")
    out: dict[str, Any] = {}
    if value.get("verbosity") is not None:
        out["verbosity"] = _choice(value["verbosity"], "text.verbosity", ("low", "medium", "high"))
    fmt = value.get("format")
    if fmt is None:
        return out
    if not isinstance(fmt, dict):
        raise bad_request("'text.format' must be an object", param="text.format")
    kind = fmt.get("type")
    if kind == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise bad_request("'text.format.schema' must be an object", param="text.format.schema")
        schema: dict[str, Any] = {"name": _string(fmt.get("name"), "text.format.name"), "schema": fmt["schema"]}
        if fmt.get("description") is not None:
            schema["description"] = _string(fmt["description"], "text.format.description")
        if fmt.get("strict") is not None:
            schema["strict"] = _bool(fmt["strict"], "text.format.strict")
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind != "text":
        raise bad_request("'text.format.type' must be 'text', 'json_object' or 'json_schema'",
                          param="text.format.type")
    return out


def _reasoning(value: Any) -> str | None:
    if not isinstance(value, dict):
        raise bad_request("'reasoning' must be an object", param="reasoning")
    for key, v in value.items():
        if key != "effort" and v is not None:
            raise bad_request(f"'reasoning.{key}' is not supported: Chat Completions upstreams return no "
                              "reasoning summaries (only `reasoning.effort` is forwarded)", param=f"reasoning.{key}")
    effort = value.get("effort")
    return None if effort is None else _string(effort, "reasoning.effort")


def _logprobs(b: dict[str, Any]) -> dict[str, Any]:
    include = b.get("include", [])
    if not isinstance(include, list) or not all(isinstance(v, str) for v in include):
        raise bad_request("'include' must be an array of strings", param="include")
    for value in include:
        if value not in INCLUDES:
            raise bad_request(f"include value '{value}' is not supported (supported: {sorted(INCLUDES)})",
                              param="include")
    # `reasoning.encrypted_content` asks for something itsproxy never produces (reasoning items): nothing to add.
    out: dict[str, Any] = {}
    if "message.output_text.logprobs" in include or "top_logprobs" in b:
        out["logprobs"] = True
    if "top_logprobs" in b:
        out["top_logprobs"] = _int(b["top_logprobs"], "top_logprobs", 0)
    return out


def _echo(b: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """What the Response object repeats of the request (as the client sent it, defaults filled in)."""
    return {"instructions": b.get("instructions"), "tools": b.get("tools", []),
            "tool_choice": b.get("tool_choice", "auto"), "text": _text_echo(b.get("text", {})),
            "temperature": b.get("temperature"), "top_p": b.get("top_p"),
            "max_output_tokens": b.get("max_output_tokens"), "parallel_tool_calls": b.get("parallel_tool_calls", True),
            "metadata": b.get("metadata", {}), "user": b.get("user"), "store": False,
            "reasoning": {"effort": params.get("reasoning_effort"), "summary": None},
            "top_logprobs": b.get("top_logprobs"), "truncation": "disabled", "previous_response_id": None,
            "background": False, "service_tier": b.get("service_tier")}


def _text_echo(text: dict[str, Any]) -> dict[str, Any]:
    out = {"format": text.get("format") or {"type": "text"}}
    if text.get("verbosity") is not None:
        out["verbosity"] = text["verbosity"]
    return out


# -- small type checks -------------------------------------------------------------------------

def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"'{key}' must be a string", param=key)
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"'{key}' must be a boolean", param=key)
    return value


def _int(value: Any, key: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise bad_request(f"'{key}' must be an integer >= {lo}", param=key)
    return value


def _number(b: dict[str, Any], key: str, lo: float, hi: float) -> None:
    v = b.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi):
        raise bad_request(f"'{key}' must be a number between {lo} and {hi}", param=key)


def _choice(value: Any, key: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise bad_request(f"'{key}' must be one of {list(allowed)}", param=key)
    return value
