"""The `check` stage: a filter that runs sound external checkers on each candidate."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from strategies.check import Checker, build_checkers
from strategies.extract import Extractor, build_extractor
from strategies.types import Candidate, SpecError, Verdict


@dataclass
class CheckStage:
    checkers: list[Checker]
    extractor: Extractor | None = None  # own `extract`, else the vote stage's (set by the pipeline)
    name: str = "check"
    role: str = "filter"
    own_extractor: bool = field(default=False, repr=False)

    @classmethod
    def build(cls, spec: Any, path: str) -> "CheckStage":
        if not isinstance(spec, dict):
            raise SpecError(path, "must be a mapping naming a checker (command, python, http, json_schema, regex)")
        extractor = build_extractor(spec["extract"], f"{path}.extract") if "extract" in spec else None
        return cls(build_checkers(spec, path), extractor, own_extractor=extractor is not None)

    def payload(self, ctx: Any, c: Candidate) -> dict[str, Any]:
        candidate = {"role": "assistant", "content": c.message.get("content")}
        if c.message.get("tool_calls"):
            candidate["tool_calls"] = c.message["tool_calls"]
        answer = self.extractor(c.message) if self.extractor is not None else c.answer
        return {"messages": ctx.messages, "candidate": candidate, "answer": answer}

    async def apply(self, ctx: Any, candidates: list[Candidate]) -> None:
        async def one(c: Candidate) -> list[Verdict]:
            payload = self.payload(ctx, c)
            return list(await asyncio.gather(*(_safe(ch, payload) for ch in self.checkers)))

        results = await asyncio.gather(*(one(c) for c in candidates))
        for c, verdicts in zip(candidates, results):
            c.verdicts.extend(verdicts)


async def _safe(checker: Checker, payload: dict[str, Any]) -> Verdict:
    # Fail closed: a checker that raises is a failed check, never a pass.
    try:
        verdict = await checker.check(payload)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any checker fault is a verdict, not a crash
        return Verdict(getattr(checker, "name", "checker"), False, f"checker error: {type(exc).__name__}")
    if not isinstance(verdict, Verdict):
        return Verdict(getattr(checker, "name", "checker"), False, "checker returned no verdict")
    return verdict
