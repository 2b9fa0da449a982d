"""Helpers shared by the checker kinds: spec validation, verdicts, text source."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from itsproxy.strategies.types import SpecError, Verdict

CRITIQUE_CAP = 16 * 1024  # bytes/characters of checker output we keep
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_CONCURRENCY = 4


def clip(text: str, cap: int = CRITIQUE_CAP) -> str:
    text = text.strip()
    if len(text) <= cap:
        return text
    return text[:cap].rstrip() + " …[truncated]"


def secs(t: float) -> str:
    return f"{t:g}s"


def verdict(name: str, passed: bool, critique: str = "") -> Verdict:
    return Verdict(checker=name, passed=passed, critique=clip(critique), hard=True)


def failed(name: str, critique: str) -> Verdict:
    return verdict(name, False, critique)


def check_keys(spec: dict[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in spec:
        if key not in allowed:
            raise SpecError(
                f"{path}.{key}", f"unknown key {key!r}; expected one of {', '.join(allowed)}"
            )


def positive_number(spec: dict[str, Any], key: str, path: str, default: float) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise SpecError(f"{path}.{key}", f"must be a positive number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise SpecError(f"{path}.{key}", f"must be finite, got {value!r}")
    return float(value)


def positive_int(spec: dict[str, Any], key: str, path: str, default: int) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(f"{path}.{key}", f"must be a positive integer, got {value!r}")
    return value


def env_value(value: Any, path: str) -> str:
    """A string or number, as the child's variable. (`os.environ/NAME` references are
    resolved by the config loader before any spec reaches a strategy.)"""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SpecError(path, f"must be a string or number, got {type(value).__name__}")
    return str(value)


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(parts) if parts else None
    return None


def payload_text(payload: dict[str, Any]) -> str | None:
    """The text a format checker looks at: the extracted answer, else the
    candidate's content, else the first tool call's arguments."""
    answer = payload.get("answer")
    if answer is not None:
        return str(answer)
    cand = payload.get("candidate") or {}
    content = _content_text(cand.get("content"))
    if content:
        return content
    for call in cand.get("tool_calls") or []:
        args = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
        if isinstance(args, str):
            return args
        if args is not None:
            return json.dumps(args)
    return content


class LoopLocal:
    """A per-event-loop semaphore (a checker may outlive one loop in tests)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None

    def sem(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._sem is None:
            self._loop, self._sem = loop, asyncio.Semaphore(self.limit)
        return self._sem
