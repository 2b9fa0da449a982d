"""Majority vote / self-consistency over extracted answers (pure logic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from itsproxy.strategies.extract import Extractor, build_extractor
from itsproxy.strategies.types import Candidate, SpecError


@dataclass
class Tally:
    votes: dict[str, float]  # answer -> count (or summed weight), in first-seen order
    winner: Candidate | None
    tie: bool  # the top score was shared; broken by earliest candidate
    agreement: float | None  # winner's share of the votes cast


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
    if weight is None:
        votes = {a: int(v) for a, v in votes.items()}
    return Tally(votes, first[best], len(leaders) > 1, agreement)


@dataclass
class VoteStage:
    """Picker: the answer most candidates agree on (optionally weighted by a score)."""

    extractor: Extractor
    weight: str | None = None
    name: str = "vote"
    role: str = "picker"

    @classmethod
    def build(cls, spec: Any, path: str) -> "VoteStage":
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

    async def pick(self, ctx: Any, candidates: list[Candidate]) -> Tally:
        return tally(candidates, self.weight)
