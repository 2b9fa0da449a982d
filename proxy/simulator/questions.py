"""The simulator's task: "What is A + B?". Parsing questions and answers, and a
question generator for tests and benchmarks."""

from __future__ import annotations

import random
import re
from typing import Any

QUESTION_RE = re.compile(r"What is\s+\(?(-?\d+)\)?\s*\+\s*\(?(-?\d+)\)?\s*\?", re.IGNORECASE)
NUMBER_RE = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")

Question = tuple[int, int]


def content_text(content: Any) -> str:
    """The text of a message's content (a string or a list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") or "" for p in content if isinstance(p, dict))
    return str(content)


def parse_question(text: str) -> Question | None:
    """The last "What is A + B?" in `text`, as (A, B)."""
    found = None
    for m in QUESTION_RE.finditer(text):
        found = m
    return (int(found.group(1)), int(found.group(2))) if found else None


def truth_of(text: str) -> int | None:
    q = parse_question(text)
    return None if q is None else q[0] + q[1]


def find_question(messages: list[dict[str, Any]], strip: re.Pattern | None = None) -> Question | None:
    """The question of a conversation: from the last user message holding one,
    otherwise from the first message of any role holding one. `strip` removes
    matching spans (e.g. answer blocks) before searching."""

    def text_of(m: dict[str, Any]) -> str:
        t = content_text(m.get("content"))
        return strip.sub(" ", t) if strip is not None and "<" in t else t

    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            q = parse_question(text_of(m))
            if q is not None:
                return q
    for m in messages:
        if isinstance(m, dict) and m.get("role") != "user":
            q = parse_question(text_of(m))
            if q is not None:
                return q
    return None


def last_number(text: str) -> int | float | None:
    """The last number in `text` (an int when integral), or None."""
    found = None
    for m in NUMBER_RE.finditer(text):
        found = m
    if found is None:
        return None
    s = found.group(0)
    if "." in s:
        v = float(s)
        return int(v) if v.is_integer() else v
    return int(s)


def questions(seed: int, count: int) -> list[tuple[str, int]]:
    """`count` distinct ("What is A + B?", A + B) pairs, reproducible from `seed`."""
    rng = random.Random(f"questions|{seed}")
    seen: set[Question] = set()
    out: list[tuple[str, int]] = []
    while len(out) < count:
        digits = rng.choice((2, 2, 3, 3, 3, 4))
        a = rng.randint(1, 10**digits - 1)
        b = rng.randint(1, 10 ** rng.choice((2, 3, digits)) - 1)
        if rng.random() < 0.15:
            a = -a
        if rng.random() < 0.15:
            b = -b
        if (a, b) in seen:
            continue
        seen.add((a, b))
        out.append((f"What is {a} + {b}?", a + b))
    return out
