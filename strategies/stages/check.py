"""The `check` stage: a filter that runs sound external checkers on each candidate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from itsproxy.strategies.checkers.build import (
    Checker,
    Redact,
    aclose_checkers,
    build_checkers,
    check_candidates,
    no_redaction,
)
from itsproxy.strategies.extract import Extractor, build_extractor
from itsproxy.strategies.ports import RunContext
from itsproxy.strategies.types import Candidate, SpecError


@dataclass
class CheckStage:
    checkers: list[Checker]
    extractor: Extractor | None = None  # own `extract`, else the vote stage's (set by the pipeline)
    name: str = "check"
    role: Literal["filter"] = "filter"
    redact: Redact = no_redaction  # the proxy installs its redactor at config load (proxy/redact.py)

    @property
    def secrets(self) -> list[str]:
        """What this stage's checkers were configured with that must never be shown (headers, env)."""
        return [s for checker in self.checkers for s in checker.secrets]

    @property
    def models(self) -> list[str]:
        return []  # checkers call no model_list model

    @property
    def model_path(self) -> str | None:
        return None

    @classmethod
    def build(cls, spec: Any, path: str) -> CheckStage:
        if not isinstance(spec, dict):
            raise SpecError(path, "must be a mapping naming a checker (command, python, http, json_schema, regex)")
        extractor = build_extractor(spec["extract"], f"{path}.extract") if "extract" in spec else None
        return cls(build_checkers(spec, path), extractor)

    def answer_of(self, c: Candidate) -> str | None:
        return self.extractor(c.message) if self.extractor is not None else c.answer

    async def apply(self, ctx: RunContext, candidates: list[Candidate]) -> None:
        # Fail closed lives in check_candidates: a checker fault is a failed verdict.
        await check_candidates(self.checkers, candidates, ctx.messages, self.answer_of, self.redact)

    async def aclose(self) -> None:
        await aclose_checkers(self.checkers)
