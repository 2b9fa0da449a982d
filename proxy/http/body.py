"""Reading a client's request body at the edge: size-capped, time-limited, depth-limited JSON.

Every surface reads its body here, before anything else looks at it: a body over
`server.max_body_bytes` is a 413, one that does not arrive within `server.body_timeout_s`
a 408, one nested deeper than MAX_JSON_DEPTH a 400 (checked before parsing: json.loads
recurses once per level), and NaN/Infinity are refused (they are not JSON).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.requests import Request

from itsproxy.proxy.errors import ApiError

MAX_JSON_DEPTH = 64
_JSON_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')  # strings (skipped whole) and brackets


async def read_json(request: Request, limit: int, timeout_s: float) -> Any:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"request body is larger than the {limit} byte limit", code="body_too_large")
    chunks: list[bytes] = []
    try:  # a client that sends half a body must not hold a connection (and its memory) open for ever
        async with asyncio.timeout(timeout_s):
            size = 0
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise ApiError(413, f"request body is larger than the {limit} byte limit",
                                   code="body_too_large")
                chunks.append(part)
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g}s",
                       code="body_timeout") from None
    raw = b"".join(chunks)
    # Depth is checked before parsing: json.loads recurses once per level (100k levels: a RecursionError).
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and await _depth(raw) > MAX_JSON_DEPTH:
        raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="json_too_deep")
    try:
        return _DECODER.decode(raw.decode(json.detect_encoding(raw)))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None


async def _depth(raw: bytes) -> int:
    """A big body is scanned in a thread: a few MB of brackets take a few hundred ms."""
    return _nesting_depth(raw) if len(raw) < 64 * 1024 else await asyncio.to_thread(_nesting_depth, raw)


def _nesting_depth(raw: bytes) -> int:
    """The deepest bracket nesting of a JSON text, brackets inside strings not counted."""
    depth = deepest = 0
    for token in _JSON_TOKENS.findall(raw):
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; accepting them would poison what we forward and render.
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # one, not one per json.loads call
