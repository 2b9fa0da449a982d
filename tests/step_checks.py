"""Checkers for the step search's `score: check` tests (imported by `python:` checkers)."""

from __future__ import annotations

import re
from typing import Any

STEP = re.compile(r"Step \d+: (-?\d+) ([+*-]) (\d+) = (-?\d+)")
SEEN: list[bool] = []  # the `partial` flag of every payload, in order


def arithmetic(payload: dict[str, Any]) -> tuple[bool, str]:
    """Every whole step line computes right (a partial chain may stop anywhere)."""
    SEEN.append(payload["partial"])
    for a, op, b, r in STEP.findall(payload["candidate"]["content"] or ""):
        x, y = int(a), int(b)
        if int(r) != (x + y if op == "+" else x - y if op == "-" else x * y):
            return False, f"{a} {op} {b} is not {r}"
    return True, ""


def crash(payload: dict[str, Any]) -> bool:
    raise RuntimeError("the checker broke")
