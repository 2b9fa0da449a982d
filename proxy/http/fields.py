"""Type checks for the request fields the proxy itself reads, shared by the surfaces.

Anything the proxy reads from a client body (to count tokens, to build prompts, to
pick `n`) is checked here first, so a wrongly typed field is a 400 naming the field
and never a TypeError deep in the request path (a 500, or a "502 upstream failed"
on a scaling route). What the proxy only forwards is the upstream's to judge.
"""

from __future__ import annotations

from typing import Any

from itsproxy.proxy.errors import bad_request

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
ITS_KEYS = frozenset({"n"})


def its_options(value: Any) -> dict[str, Any]:
    """The `its` object (extra_body): per-request route adjustments."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request("'its' must be an object", param="its")
    for key in value:
        if key not in ITS_KEYS:
            raise bad_request(f"unknown its option '{key}'", param=f"its.{key}")
    if "n" in value:
        n = value["n"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise bad_request("'its.n' must be an integer >= 1", param="its.n")
    return value


def _string(value: Any, where: str, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise bad_request(f"'{where}' must be a string", param=where)


def _part(part: Any, where: str) -> None:
    if not isinstance(part, dict):
        raise bad_request(f"'{where}' must be an object", param=where)
    _string(part.get("type"), f"{where}.type", optional=False)
    for key in ("text", "refusal"):
        if key in part:
            _string(part[key], f"{where}.{key}", optional=False)


def _content(value: Any, where: str) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list):
        raise bad_request(f"'{where}' must be a string or an array", param=where)
    for j, part in enumerate(value):
        _part(part, f"{where}[{j}]")


def _function(value: Any, where: str, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, dict):
        raise bad_request(f"'{where}' must be an object", param=where)
    _string(value.get("name"), f"{where}.name")
    _string(value.get("arguments"), f"{where}.arguments")


def _tool_calls(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise bad_request(f"'{where}' must be an array", param=where)
    for j, call in enumerate(value):
        at = f"{where}[{j}]"
        if not isinstance(call, dict):
            raise bad_request(f"'{at}' must be an object", param=at)
        _string(call.get("id"), f"{at}.id")
        _string(call.get("type"), f"{at}.type")
        _function(call.get("function"), f"{at}.function", optional=False)


def message(m: Any, where: str) -> None:
    """One chat message: every field the proxy reads, typed."""
    if not isinstance(m, dict):
        raise bad_request(f"'{where}' must be an object", param=where)
    role = m.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise bad_request(f"'{where}.role' must be one of {', '.join(sorted(ROLES))}", param=f"{where}.role")
    _content(m.get("content"), f"{where}.content")
    for key in ("name", "tool_call_id", "refusal"):
        _string(m.get(key), f"{where}.{key}")
    _tool_calls(m.get("tool_calls"), f"{where}.tool_calls")
    _function(m.get("function_call"), f"{where}.function_call", optional=True)


def messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    for i, m in enumerate(value):
        message(m, f"messages[{i}]")
    return value


def tools(value: Any) -> None:
    """`tools`: an array of objects (the proxy counts them as prompt tokens)."""
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise bad_request("'tools' must be an array of objects", param="tools")
