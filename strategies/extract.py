"""Answer extraction and normalisation: what a candidate's vote is cast for.

An extractor maps an assistant message to a canonical answer string, or None
when it holds no extractable answer (such candidates do not vote).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from itsproxy.strategies.types import Candidate, SpecError

KINDS = ("number", "regex", "boxed", "exact", "json", "tool_call")

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Extractor:
    kind: str
    pattern: re.Pattern[str] | None = None

    def __call__(self, message: dict[str, Any]) -> str | None:
        return _FUNCS[self.kind](message, self.pattern)

    def inapplicable(self, messages: list[dict[str, Any]]) -> str | None:
        """Why no answer can be extracted from any reply to this conversation, known before drawing:
        a tool-call vote when the last turn is a tool result (the model now answers in text)."""
        last = messages[-1].get("role") if messages else None
        if self.kind == "tool_call" and last in ("tool", "function"):
            return "a tool_call vote after a tool result: the model answers in text"
        return None


def extract_answers(extractor: Extractor | None, candidates: list[Candidate]) -> None:
    """Set each candidate's `answer` (what it votes for); without an extractor, leave them unset."""
    if extractor is not None:
        for c in candidates:
            c.answer = extractor(c.message)


def build_extractor(spec: Any, path: str) -> Extractor:
    """`spec` is a kind name, or a dict {extract: kind, pattern?: regex}."""
    if isinstance(spec, str):
        kind, pattern = spec, None
    elif isinstance(spec, dict):
        kind, pattern = spec.get("extract", "exact"), spec.get("pattern")
    else:
        raise SpecError(path, "must be an extractor name or a mapping")
    if kind not in KINDS:
        raise SpecError(f"{path}.extract", f"unknown extractor {kind!r}; one of {', '.join(KINDS)}")
    if kind == "regex":
        if not isinstance(pattern, str) or not pattern:
            raise SpecError(f"{path}.pattern", "extract: regex needs a pattern")
        try:
            compiled = re.compile(pattern, re.DOTALL)
        except re.error as exc:
            raise SpecError(f"{path}.pattern", f"invalid regex: {exc}") from None
        return Extractor(kind, compiled)
    if pattern is not None:
        raise SpecError(f"{path}.pattern", f"pattern only applies to extract: regex, not {kind}")
    return Extractor(kind)


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def normalise_number(text: str) -> str | None:
    """'1,000.50' -> '1000.5'; '-0' -> '0'; '3.0' -> '3'."""
    try:
        value = Decimal(text.replace(",", "").lstrip("+"))
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _number(message: dict[str, Any], _pattern: re.Pattern[str] | None) -> str | None:
    found = _NUMBER.findall(_content(message))
    return normalise_number(found[-1]) if found else None


def _regex(message: dict[str, Any], pattern: re.Pattern[str] | None) -> str | None:
    assert pattern is not None  # build_extractor compiles one for `regex`
    match = pattern.search(_content(message))
    if not match:
        return None
    value = match.group(1) if match.groups() else match.group(0)
    return _normalise_text(value) if value is not None else None


def _boxed(message: dict[str, Any], _pattern: re.Pattern[str] | None) -> str | None:
    """The last \\boxed{...}, with nested braces balanced."""
    text = _content(message)
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            inner = _normalise_text(text[i:j])
            return normalise_number(inner) or inner if inner else None
    return None


def _normalise_text(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def _exact(message: dict[str, Any], _pattern: re.Pattern[str] | None) -> str | None:
    text = _normalise_text(_content(message))
    return text or None


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _json(message: dict[str, Any], _pattern: re.Pattern[str] | None) -> str | None:
    text = _content(message).strip()
    if text.startswith("```"):  # tolerate a fenced block
        text = text.strip("`").removeprefix("json").strip()
    try:
        return _canonical_json(json.loads(text))
    except (ValueError, TypeError):
        return None


def _tool_call(message: dict[str, Any], _pattern: re.Pattern[str] | None) -> str | None:
    calls = message.get("tool_calls") or []
    if not calls:
        return None
    canon = []
    for call in calls:
        fn = call.get("function") or {}
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            return None
        canon.append({"name": fn.get("name"), "arguments": args})
    return _canonical_json(canon)


_FUNCS: dict[str, Callable[[dict[str, Any], Any], str | None]] = {
    "number": _number,
    "regex": _regex,
    "boxed": _boxed,
    "exact": _exact,
    "json": _json,
    "tool_call": _tool_call,
}
