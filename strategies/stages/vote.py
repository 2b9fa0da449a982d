"""Majority vote / self-consistency over extracted answers (pure logic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from itsproxy.strategies.extract import Extractor, build_extractor
from itsproxy.strategies.ports import RunContext
from itsproxy.strategies.types import Candidate, SpecError, Tally

__all__ = ["Tally", "VoteStage", "tally"]


def tally(candidates: list[Candidate], weight: str | None = None) -> Tally:
    """Each candidate with an answer votes once (or with its `weight` score).

    Ties break deterministically: among the answers sharing the top score, the
    one whose first candidate was drawn earliest wins, and that candidate is
    returned (a real message carrying the winning answer).
    """
    votes: dict[str, float] = {}
    first: dict[str, Candidate] = {}
    for c in candidates:
        if c.answer is None:
            continue
        w = 1.0 if weight is None else max(0.0, float(c.scores.get(weight, 0.0)))
        votes[c.answer] = votes.get(c.answer, 0.0) + w
        first.setdefault(c.answer, c)
    if not votes:
        return Tally({}, None, False, None)
    top = max(votes.values())
    leaders = [a for a, v in votes.items() if v == top]
    best = min(leaders, key=lambda a: first[a].index)
    cast = sum(votes.values())
    agreement = (top / cast) if cast > 0 else None
    if weight is None:  # plain counts render as integers
        counts: dict[str, float] = {a: int(v) for a, v in votes.items()}
        votes = counts
    return Tally(votes, first[best], len(leaders) > 1, agreement)


@dataclass
class VoteStage:
    """Picker: the answer most candidates agree on (optionally weighted by a score)."""

    extractor: Extractor
    weight: str | None = None
    name: str = "vote"
    role: Literal["picker"] = "picker"

    @property
    def models(self) -> list[str]:
        return []  # calls no model

    @property
    def model_path(self) -> str | None:
        return None

    @classmethod
    def build(cls, spec: Any, path: str) -> VoteStage:
        spec = spec if spec is not None else {}
        if isinstance(spec, dict):
            unknown = set(spec) - {"extract", "pattern", "weight"}
            if unknown:
                raise SpecError(f"{path}.{sorted(unknown)[0]}", "unknown key (known: extract, pattern, weight)")
            weight = spec.get("weight")
            if weight is not None and (not isinstance(weight, str) or not weight):
                raise SpecError(f"{path}.weight", "must name a score, e.g. `score` or `reward`")
        else:
            weight = None
        return cls(build_extractor(spec, path), weight)

    async def pick(self, ctx: RunContext, candidates: list[Candidate]) -> Tally:
        return tally(candidates, self.weight)

    async def aclose(self) -> None:
        return None
