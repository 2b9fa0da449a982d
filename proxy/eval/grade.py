"""Grading one proxy response: the final answer, every candidate's answer, and the judge's calls.

The answer graded is the route's own extraction when the response carries one
(`its.evidence[selected].answer`), else `--extract` applied to the returned text, else
the text's first line. Candidates are graded from `its.evidence[].answer`, which only
routes with an extractor (vote, usc, check) fill. It is right when a checker given on the command line passes it,
or, with no checker, when it normalises to one of the row's accepted answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from itsproxy.proxy.eval.dataset import Row
from itsproxy.proxy.eval.normalise import first_line, matches
from itsproxy.strategies.checkers.python_entry import PythonChecker
from itsproxy.strategies.extract import Extractor

JUDGE_APPROVES = 0.5  # the pipeline's own reading of a judge score (pipeline.count_disagreements)


@dataclass
class Grader:
    extractor: Extractor | None = None
    checker: PythonChecker | None = None

    def answer_of(self, text: str, its: dict[str, Any] | None) -> str | None:
        evidence = (its or {}).get("evidence") or []
        selected = (its or {}).get("selected")
        for e in evidence:
            if e.get("index") == selected and e.get("answer") is not None:
                return str(e["answer"])
        if self.extractor is not None:
            return self.extractor({"role": "assistant", "content": text})
        return first_line(text) or None

    async def is_right(self, row: Row, answer: str | None) -> bool:
        if answer is None:
            return False
        if self.checker is None:
            return matches(answer, list(row.answers))
        payload = {**row.checker_payload(), "candidate": {"role": "assistant", "content": answer}, "answer": answer}
        return (await self.checker.check(payload)).passed

    async def grade(self, row: Row, text: str, its: dict[str, Any] | None) -> dict[str, Any]:
        """The graded fields of one result line."""
        answer = self.answer_of(text, its)
        out: dict[str, Any] = {"answer": answer, "correct": await self.is_right(row, answer)}
        evidence = [e for e in (its or {}).get("evidence") or [] if isinstance(e, dict)]
        if all(e.get("answer") is None for e in evidence):
            return out  # no extractor on this route (e.g. judge only): the candidates cannot be graded
        rights = [await self.is_right(row, None if e.get("answer") is None else str(e["answer"])) for e in evidence]
        out["candidate_answers"] = [e.get("answer") for e in evidence]
        out["candidate_correct"] = rights
        out["coverage"] = any(rights)
        judged = [(e["scores"]["judge"] >= JUDGE_APPROVES, right) for e, right in zip(evidence, rights)
                  if isinstance(e.get("scores"), dict) and isinstance(e["scores"].get("judge"), (int, float))]
        if judged:
            out["judge"] = {"fp": sum(a and not r for a, r in judged), "fn": sum(r and not a for a, r in judged),
                            "wrong": sum(not r for _, r in judged), "right": sum(r for _, r in judged)}
        return out
