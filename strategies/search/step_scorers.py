"""The `judge` and `check` step scorers of a search over reasoning steps.

`judge`: the route's judge plumbing (the judge stage's prompt wrapping, JSON verdict and model
call) asked about a *partial* chain: the prompt says the solution is unfinished and asks how
likely its steps so far are right, 1-10, read as (s - 1) / 9 in [0, 1]. Every call is metered
under phase `search` (it is part of the search's spend, not a select stage's). An unparseable
reply or a failed call scores nothing (the step keeps no score), never a fake pass.

`check`: the configured checkers (as in a `check` stage) run on the partial chain; the payload
carries `"partial": true` (false for a complete chain) so a checker can accept an unfinished
answer. A rejection prunes the branch; a pass keeps it. A checker error, a timeout or garbage is a
rejection (fail closed, as everywhere checkers run): the search never keeps a branch on a fault.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from itsproxy.strategies.checkers.build import Checker, aclose_checkers, build_checkers
from itsproxy.strategies.ports import RunContext
from itsproxy.strategies.stages.judge import (
    UNPARSEABLE,
    answer_block,
    bounded_gather,
    check_keys,
    failed_note,
    json_schema,
    parse_json_object,
    positive_int,
    request_text,
    temperature,
    verifier_messages,
)
from itsproxy.strategies.types import SampleError, SpecError

PHASE = "search"
JUDGE_KEYS = {"model", "rubric", "temperature", "max_tokens"}
PARTIAL_ASK = ("The answer above is a PARTIAL solution: only its first steps, unfinished. Rate how likely the "
               "steps written so far are all correct, from 1 (surely wrong) to 10 (surely correct); do not "
               "penalise it for being unfinished. "
               'Reply with JSON: {"reason": "<one sentence>", "score": <integer 1-10>}.')
COMPLETE_ASK = ("Rate how likely the answer above is correct, from 1 (surely wrong) to 10 (surely correct). "
                'Reply with JSON: {"reason": "<one sentence>", "score": <integer 1-10>}.')


@dataclass(frozen=True)
class StepJudge:
    model: str
    rubric: str = ""
    temperature: float = 0.0
    max_tokens: int | None = None

    @classmethod
    def build(cls, spec: Any, path: str, models: set[str]) -> StepJudge:
        spec = check_keys(spec, path, JUDGE_KEYS)
        model = spec.get("model")
        if not isinstance(model, str) or model not in models:
            raise SpecError(f"{path}.model", f"must name a model_list model, got {model!r}")
        rubric = spec.get("rubric", "")
        if not isinstance(rubric, str):
            raise SpecError(f"{path}.rubric", "must be a string")
        return cls(model, rubric.strip(), temperature(spec, path), positive_int(spec, "max_tokens", path, None))

    async def scores(self, ctx: RunContext, texts: list[str],
                     partial: list[bool]) -> tuple[list[float | None], list[str]]:
        """Each text's score in [0, 1] (None where the judge gave none), and notes on failures."""
        results = await bounded_gather(self._one(ctx, t, p) for t, p in zip(texts, partial))
        return [s for s, _ in results], [n for _, n in results if n]

    async def _one(self, ctx: RunContext, text: str, partial: bool) -> tuple[float | None, str]:
        messages = verifier_messages(request_text(ctx.messages), answer_block(text), self.rubric,
                                     PARTIAL_ASK if partial else COMPLETE_ASK)
        params: dict[str, Any] = {"temperature": self.temperature, "response_format": json_schema(
            "verdict", {"reason": {"type": "string"}, "score": {"type": "integer"}})}
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        try:
            sample = (await ctx.sampler.sample(messages, model=self.model, n=1, phase=PHASE, params=params))[0]
        except SampleError as exc:
            return None, failed_note("step judge", exc)
        score = (parse_json_object(sample.text) or {}).get("score")
        if isinstance(score, str) and re.fullmatch(r"\s*\d+\s*", score):
            score = int(score)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 10:
            return None, f"step judge: {UNPARSEABLE}"
        return max(0.0, float(score) - 1.0) / 9.0, ""


@dataclass
class StepCheck:
    checkers: list[Checker]

    @classmethod
    def build(cls, spec: Any, path: str) -> StepCheck:
        if isinstance(spec, dict) and "extract" in spec:
            raise SpecError(f"{path}.extract", "a step check sees the partial text, not an extracted answer")
        return cls(build_checkers(spec, path))

    async def passes(self, ctx: RunContext, texts: list[str], partial: list[bool]) -> list[bool]:
        """Whether every checker passed each text; a fault is a rejection."""
        return list(await asyncio.gather(*(self._one(ctx, t, p) for t, p in zip(texts, partial))))

    async def _one(self, ctx: RunContext, text: str, partial: bool) -> bool:
        payload = {"messages": ctx.messages, "candidate": {"role": "assistant", "content": text},
                   "answer": None, "partial": partial}
        for checker in self.checkers:
            try:
                verdict = await checker.check(payload)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - fail closed: a faulty checker rejects
                return False
            if not getattr(verdict, "passed", False):
                return False
        return True

    async def aclose(self) -> None:
        await aclose_checkers(self.checkers)
