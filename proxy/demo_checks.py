"""An exact arithmetic checker for "What is A + B?" questions (demo and tests).

As a python entry point:  check: {python: "itsproxy.proxy.demo_checks:check_sum"}
As a command:             check: {command: [python, -m, itsproxy.proxy.demo_checks]}
(reads the payload JSON on stdin, prints the critique, exits 0 on pass, 1 on fail).
The critique never reveals the right answer: the model has to recompute it.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

_QUESTION = re.compile(r"what\s+is\s+\(?\s*(-?\d+)\s*\)?\s*\+\s*\(?\s*(-?\d+)\s*\)?\s*\?", re.I)
_INT = re.compile(r"(?<![\w.])[-−]?\d{1,3}(?:,\d{3})+(?![\d.])|(?<![\w.])[-−]?\d+(?![\d.]\d)")
_WHOLE = re.compile(r"\s*[-+]?\d+(?:\.0*)?\s*")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def find_question(payload: dict) -> tuple[int, int] | None:
    """The last "What is A + B?" in the user messages."""
    found = None
    for msg in payload.get("messages") or []:
        if isinstance(msg, dict) and msg.get("role") == "user":
            for m in _QUESTION.finditer(_text(msg.get("content"))):
                found = (int(m.group(1)), int(m.group(2)))
    return found


def _last_int(text: str) -> int | None:
    matches = _INT.findall(text)
    if not matches:
        return None
    return int(matches[-1].replace(",", "").replace("−", "-"))


def proposed_answer(payload: dict) -> int | None:
    answer = payload.get("answer")
    if answer is not None and _WHOLE.fullmatch(str(answer)):
        return int(float(str(answer).strip())) if "." in str(answer) else int(str(answer).strip())
    cand = payload.get("candidate") or {}
    value = _last_int(_text(cand.get("content")))
    if value is not None:
        return value
    for call in cand.get("tool_calls") or []:
        try:
            args = json.loads((call.get("function") or {}).get("arguments") or "{}")
        except (ValueError, TypeError, AttributeError):
            continue
        got = args.get("answer") if isinstance(args, dict) else None
        if isinstance(got, bool):
            continue
        if isinstance(got, int):
            return got
        if isinstance(got, (str, float)):
            value = _last_int(str(got))
            if value is not None:
                return value
    return None


def check_sum(payload: dict) -> tuple[bool, str]:
    question = find_question(payload)
    if question is None:
        return False, "No 'What is A + B?' question found in the user messages."
    a, b = question
    value = proposed_answer(payload)
    if value is None:
        return False, "No integer answer found. End your reply with 'The answer is N'."
    if value == a + b:
        return True, f"{a} + {b} = {value}, correct"
    return False, f"The answer {value} is wrong: {a} + {b} is not {value}. Recompute the sum carefully."


def main() -> int:
    try:
        payload = json.loads(sys.stdin.buffer.read())
        if not isinstance(payload, dict):
            raise ValueError("payload is not a JSON object")
    except ValueError as exc:
        print(f"invalid checker payload: {exc}")
        return 2
    passed, critique = check_sum(payload)
    print(critique)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
