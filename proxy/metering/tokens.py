"""Offline token counting with tiktoken, from the encodings litellm bundles.

Used where an upstream reports no usage (the figure is then marked estimated),
to split one `n` call's completion tokens across its choices, and by the
simulator to report usage the way OpenAI counts it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from typing import Any

ENCODING = "o200k_base"
# OpenAI's documented chat overhead: a few tokens per message plus the reply primer.
PER_MESSAGE = 3
REPLY_PRIMER = 3


def _bundled_cache_dir() -> str | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "litellm_core_utils", "tokenizers")
    return path if os.path.isdir(path) else None


@lru_cache(maxsize=1)
def _encoding():
    # Point tiktoken at litellm's bundled files so nothing is downloaded.
    cache = _bundled_cache_dir()
    if cache and "TIKTOKEN_CACHE_DIR" not in os.environ:
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
    import tiktoken

    return tiktoken.get_encoding(ENCODING)


def warm() -> None:
    """Load the encoding now (~0.4 s, ~80 MB): at startup, not inside the first request that counts."""
    _encoding()


def token_bytes(text: str) -> list[bytes]:
    """The text's tokens, as bytes: the same tokens `count_text` counts."""
    enc = _encoding()
    return [enc.decode_single_token_bytes(t) for t in enc.encode(text, disallowed_special=())]


def count_text(text: str) -> int:
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: count the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def count_message(message: dict[str, Any]) -> int:
    """Tokens of one assistant reply: its text plus any tool calls."""
    n = count_text(_content_text(message.get("content")))
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        n += count_text(fn.get("name", "")) + count_text(fn.get("arguments", "")) + 3
    return n


def count_messages(messages: list[dict[str, Any]], tools: list | None = None) -> int:
    """Prompt tokens of a chat request, the way OpenAI counts them (closely)."""
    n = REPLY_PRIMER
    for m in messages:
        n += PER_MESSAGE + count_text(m.get("role", "")) + count_message(m)
        if m.get("name"):
            n += count_text(m["name"]) + 1
    if tools:
        n += count_text(json.dumps(tools, separators=(",", ":")))
    return n
