"""Shared pieces of the checker tests."""

from __future__ import annotations

import textwrap

from itsproxy.strategies.checkers.build import aclose_checkers, build_checkers, payload_for
from itsproxy.strategies.types import Candidate, Sample

QUESTION = [{"role": "user", "content": "What is 17 + 25?"}]
PATH = "routes[2].select[0].check"


def cand(content: str | None = "The answer is 42.", answer: str | None = None, index: int = 0,
         tool_calls: list | None = None) -> Candidate:
    msg = {"role": "assistant", "content": content}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return Candidate(index=index, sample=Sample(message=msg, finish_reason="stop", model="m", call_id=1),
                     answer=answer)


def one(spec: dict):
    checkers = build_checkers(spec, PATH)
    assert len(checkers) == 1
    return checkers[0]


async def run(spec: dict, content="The answer is 42.", answer=None, messages=QUESTION, **kw):
    checker = one(spec)
    try:
        return await checker.check(payload_for(cand(content, answer, **kw), messages))
    finally:
        await aclose_checkers([checker])


def py(code: str, **extra) -> dict:
    return {"command": ["python", "-c", textwrap.dedent(code)], **extra}
