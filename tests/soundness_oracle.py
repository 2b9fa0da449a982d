"""A checker whose verdicts a test controls: pass/fail is a seeded coin per
(salt, candidate text), and every text it passed is remembered."""

from __future__ import annotations

import random
import threading

SETTINGS = {"salt": 0, "pass_rate": 0.5}
PASSED: set[str] = set()
_lock = threading.Lock()


def check(payload: dict) -> tuple[bool, str]:
    text = payload["candidate"].get("content") or ""
    ok = random.Random(f"{SETTINGS['salt']}:{text}").random() < SETTINGS["pass_rate"]
    if ok:
        with _lock:
            PASSED.add(text)
    return ok, "looks right" if ok else "the oracle says no: recompute"
