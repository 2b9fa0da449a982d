"""`POST /v1/embeddings`: deterministic unit vectors from a hash of the text.

The same input (and server seed) always gives the same vector; different inputs give
unrelated ones. Vector i's first d components are drawn in order, so `dimensions: d` is the
full vector's prefix renormalised, as with OpenAI's text-embedding-3 models. `encoding_format:
base64` is little-endian float32 bytes (what the openai SDK asks for and decodes by default).
Billed in `/stats` like a pooling endpoint: prompt tokens only.
"""

from __future__ import annotations

import base64
import math
import random
import struct
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from itsproxy.proxy.metering import tokens

from . import replies
from .replies import error, json_response

DEFAULT_DIMENSIONS = 1536
MAX_DIMENSIONS = 3072
MAX_INPUTS = 2048

# One input: its text (or its token ids, as text) and its token count.
Item = tuple[str, int]


async def embeddings(request: Request) -> Response:
    opened = await replies.open_model_request(request)
    if isinstance(opened, Response):
        return opened
    st, body, model, _, cfg = opened
    items = read_inputs(body.get("input"))
    if items is None:
        return error(st, model, "'input' must be a non-empty string, a list of strings, a list of token ids "
                                f"or a list of lists of token ids (at most {MAX_INPUTS})", "input", "invalid_value")
    dims = body.get("dimensions")
    dims = DEFAULT_DIMENSIONS if dims is None else dims
    if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= MAX_DIMENSIONS:
        return error(st, model, f"dimensions must be an integer between 1 and {MAX_DIMENSIONS}", "dimensions",
                     "invalid_value")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        return error(st, model, "encoding_format must be 'float' or 'base64'", "encoding_format", "invalid_value")
    blocked = await replies.gate(st, request, model, cfg)
    if blocked is not None:
        return blocked

    data = [{"object": "embedding", "index": i, "embedding": encode(vector(cfg.seed, text, dims), fmt)}
            for i, (text, _) in enumerate(items)]
    prompt_tokens = sum(n for _, n in items)
    st.stats.billed(model, prompt_tokens, 0)
    out: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if not cfg.no_usage:
        out["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return json_response(out)


def read_inputs(raw: Any) -> list[Item] | None:
    if isinstance(raw, str):
        return [(raw, tokens.count_text(raw))] if raw else None
    if not isinstance(raw, list) or not raw or len(raw) > MAX_INPUTS:
        return None
    if all(isinstance(x, str) and x for x in raw):
        return [(x, tokens.count_text(x)) for x in raw]
    if all(_is_id(x) for x in raw):
        return [(_ids_key(raw), len(raw))]
    if all(isinstance(x, list) and x and all(_is_id(t) for t in x) for x in raw):
        return [(_ids_key(x), len(x)) for x in raw]
    return None


def _is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _ids_key(ids: list[int]) -> str:
    return "ids:" + ",".join(map(str, ids))


def vector(seed: int, text: str, dims: int) -> list[float]:
    """A unit vector determined by (seed, text); its components are drawn in order, so a
    shorter one is a renormalised prefix of a longer one."""
    rng = random.Random(f"embed|{seed}|{text}")
    v = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


def encode(v: list[float], fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii")
    return v


__all__ = ["embeddings", "read_inputs", "vector", "encode"]
