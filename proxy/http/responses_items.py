"""Responses API items, both ways: `input` items into a chat conversation, a chat
message back into `output` items, chat usage into Responses usage.

Every upstream we front speaks Chat Completions, and every strategy reads a chat
conversation, so /v1/responses is a translation at the edge and nothing more.
Input is checked here, at the boundary, and anything that has no chat meaning
(stored items, hosted tool calls, reasoning items we never produce) is a 400 that
names the item, never dropped.
"""

from __future__ import annotations

import secrets
from typing import Any

from itsproxy.proxy.errors import ApiError, bad_request

MESSAGE_ROLES = frozenset({"user", "system", "developer", "assistant"})
STATEFUL_ITEMS = frozenset({"item_reference"})


def item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"'{where}' must be a string", param=where)
    return value


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(f"'{where}' must be an object", param=where)
    return value


# -- input: items -> chat messages -------------------------------------------------------------

def input_messages(value: Any) -> list[dict[str, Any]]:
    """`input` (a string, or a list of items) as chat messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise bad_request("'input' must be a string or a non-empty array of items", param="input")
    messages: list[dict[str, Any]] = []
    for i, raw in enumerate(value):
        where = f"input[{i}]"
        item = _obj(raw, where)
        kind = item.get("type", "message")
        if not isinstance(kind, str):
            raise bad_request(f"'{where}.type' must be a string", param=f"{where}.type")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            _add_tool_call(messages, item, where)
        elif kind == "function_call_output":
            messages.append(_tool_result(item, where))
        elif kind in STATEFUL_ITEMS:
            raise bad_request(f"{where}: '{kind}' items need stored responses; itsproxy is stateless, send the "
                              "items themselves in `input`", param=where, code="unsupported_item")
        elif kind == "reasoning":
            raise bad_request(f"{where}: 'reasoning' items are not supported (itsproxy produces none and "
                              "Chat Completions upstreams cannot take them back); leave them out of `input`",
                              param=where, code="unsupported_item")
        else:
            raise bad_request(f"{where}: item type '{kind}' is not supported; itsproxy runs no hosted tools, "
                              "use function tools and send `function_call` / `function_call_output` items",
                              param=where, code="unsupported_item")
    return messages


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if not isinstance(role, str) or role not in MESSAGE_ROLES:
        raise bad_request(f"'{where}.role' must be one of {sorted(MESSAGE_ROLES)}", param=f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise bad_request(f"'{where}.content' must be a string or an array of parts", param=f"{where}.content")
    parts = [_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
    if role == "assistant":  # chat assistant content is text: the parts of one answer, joined
        if any(p["type"] != "text" for p in parts):
            raise bad_request(f"'{where}.content' of an assistant message may hold only text parts",
                              param=f"{where}.content")
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": role, "content": parts[0]["text"]}
    return {"role": role, "content": parts}


def _part(raw: Any, where: str) -> dict[str, Any]:
    part = _obj(raw, where)
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": _str(part.get("text"), f"{where}.text")}
    if kind == "refusal":
        return {"type": "text", "text": _str(part.get("refusal"), f"{where}.refusal")}
    if kind == "input_image":
        url = part.get("image_url")
        if url is None:
            raise bad_request(f"'{where}.image_url' is required (file_id needs stored files, which itsproxy "
                              "does not keep: send the image as a URL or a data: URL)", param=f"{where}.image_url")
        image = {"url": _str(url, f"{where}.image_url")}
        if part.get("detail") is not None:
            image["detail"] = _str(part["detail"], f"{where}.detail")
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if part.get("file_data") is None:
            raise bad_request(f"'{where}.file_data' is required (file_id and file_url are not supported: "
                              "send the file inline)", param=f"{where}.file_data")
        file = {"file_data": _str(part["file_data"], f"{where}.file_data")}
        if part.get("filename") is not None:
            file["filename"] = _str(part["filename"], f"{where}.filename")
        return {"type": "file", "file": file}
    raise bad_request(f"'{where}.type' must be input_text, output_text, refusal, input_image or input_file",
                      param=f"{where}.type")


def _add_tool_call(messages: list[dict[str, Any]], item: dict[str, Any], where: str) -> None:
    """A function_call item joins the assistant turn right before it (text or other calls), as chat has it."""
    call = {"id": _str(item.get("call_id"), f"{where}.call_id"), "type": "function",
            "function": {"name": _str(item.get("name"), f"{where}.name"),
                         "arguments": _str(item.get("arguments"), f"{where}.arguments")}}
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant" and isinstance(last.get("content"), (str, type(None))):
        last.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _tool_result(item: dict[str, Any], where: str) -> dict[str, Any]:
    output = item.get("output")
    if isinstance(output, list):
        parts = [_part(p, f"{where}.output[{j}]") for j, p in enumerate(output)]
        if any(p["type"] != "text" for p in parts):
            raise bad_request(f"'{where}.output' may hold only text parts here", param=f"{where}.output")
        output = "".join(p["text"] for p in parts)
    return {"role": "tool", "tool_call_id": _str(item.get("call_id"), f"{where}.call_id"),
            "content": _str(output, f"{where}.output")}


# -- output: a chat message -> items -----------------------------------------------------------

def output_items(message: dict[str, Any], finish_reason: str | None,
                 logprobs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chat answer as Responses output items: its text as one message item, each tool call as a
    function_call item. An answer with neither is still one (empty) message."""
    status = "incomplete" if finish_reason in ("length", "content_filter") else "completed"
    items: list[dict[str, Any]] = []
    text, refusal = message.get("content"), message.get("refusal")
    calls = message.get("tool_calls") or []
    if text or refusal or not calls:
        items.append(message_item(item_id("msg"), status, _content(text, refusal, logprobs)))
    for call in calls:
        fn = call.get("function") or {}
        items.append(function_call_item(item_id("fc"), call.get("id") or item_id("call"), fn.get("name") or "",
                                        fn.get("arguments") or "", status))
    return items


def message_item(id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "message", "id": id, "status": status, "role": "assistant", "content": content}


def function_call_item(id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def text_part(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def _content(text: Any, refusal: Any, logprobs: dict[str, Any] | None) -> list[dict[str, Any]]:
    content = []
    if text or not refusal:
        content.append(text_part(text if isinstance(text, str) else "", chat_logprobs(logprobs)))
    if refusal:
        content.append({"type": "refusal", "refusal": str(refusal)})
    return content


def chat_logprobs(logprobs: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Chat's `logprobs.content` entries are already Responses' shape (token, logprob, bytes, top_logprobs)."""
    content = (logprobs or {}).get("content") if isinstance(logprobs, dict) else None
    return content if isinstance(content, list) else []


def incomplete(finish_reason: str | None) -> dict[str, str] | None:
    if finish_reason == "length":
        return {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return {"reason": "content_filter"}
    return None


def usage(chat: dict[str, Any]) -> dict[str, Any]:
    """Chat usage (prompt/completion tokens, with details when the upstream gave them) as Responses usage."""
    prompt, completion = int(chat.get("prompt_tokens") or 0), int(chat.get("completion_tokens") or 0)
    cached = (chat.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (chat.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": int(chat.get("total_tokens") or prompt + completion)}


def first_choice(resp: dict[str, Any]) -> dict[str, Any]:
    """The upstream chat completion's one choice (we never ask a Responses call for more)."""
    choices = resp.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ApiError(502, "upstream failed: the completion has no choices", code="upstream_protocol_error")
    return choices[0]
