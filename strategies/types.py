"""The data that crosses the boundary between the proxy and the strategies.

Strategies never do HTTP themselves: they ask the ports in `ports.py` (a
`Sampler`, a `MeteredHttp` ...) and hand back a `Selection`. Everything here is
plain data, so the selection logic can be tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class SpecError(ValueError):
    """A route's strategy spec is wrong; `path` names the offending key."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class SampleError(Exception):
    """A Sampler could not get any choice (the proxy's UpstreamError is one)."""


@dataclass
class Sample:
    """One choice returned by one upstream call."""

    message: dict[str, Any]  # {"role": "assistant", "content": ..., "tool_calls"?: [...]}
    finish_reason: str | None
    model: str  # the model_list name it came from
    call_id: int  # ledger id of the call that produced it
    prompt_tokens: int = 0  # what a single call for this choice would have cost
    completion_tokens: int = 0  # this choice's share of the call's completion tokens
    logprobs: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return self.message.get("content") or ""


@dataclass
class Verdict:
    """What one checker said about one candidate."""

    checker: str
    passed: bool
    critique: str = ""
    hard: bool = True  # a sound checker; only hard passes make a candidate verified


@dataclass
class Candidate:
    index: int  # position in draw order, across rounds
    sample: Sample
    round: int = 0
    augment: str | None = None
    augment_index: int | None = None
    answer: str | None = None  # extracted, normalised answer; None = does not vote
    verdicts: list[Verdict] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. judge parse failures

    @property
    def message(self) -> dict[str, Any]:
        return self.sample.message

    @property
    def text(self) -> str:
        return self.sample.text

    @property
    def model(self) -> str:
        return self.sample.model

    @property
    def hard_verdicts(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.hard]

    @property
    def verified(self) -> bool:
        """True only when hard checks ran and every one of them passed."""
        hard = self.hard_verdicts
        return bool(hard) and all(v.passed for v in hard)

    @property
    def failed_check(self) -> bool:
        return any(not v.passed for v in self.hard_verdicts)


@dataclass
class Tally:
    """A picker's decision (vote, usc)."""

    votes: dict[str, float]  # answer -> count (or summed weight), in first-seen order
    winner: Candidate | None
    tie: bool  # the top score was shared; broken by earliest candidate
    agreement: float | None  # winner's share of the votes cast
    reasons: list[str] = field(default_factory=list)  # why, in words (copied into the selection)


@dataclass(frozen=True)
class AdaptiveStop:
    """`its.stop` of an adaptive draw: which rule stopped it, and what that saved."""

    rule: str
    reason: str
    drawn: int
    max: int
    posterior: float | None
    saved: int
    tokens_saved_estimate: int

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "reason": self.reason, "drawn": self.drawn, "max": self.max,
                "posterior": self.posterior, "saved": self.saved,
                "tokens_saved_estimate": self.tokens_saved_estimate}


@dataclass(frozen=True)
class RepairStop:
    """`its.stop` of a repair loop a spend cap cut short."""

    reason: str  # the cap reached
    drawn: int
    rounds: int  # repair rounds done
    rule: str = "repair"
    saved: int = 0  # nothing is estimated as saved: the rounds were optional
    tokens_saved_estimate: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "reason": self.reason, "drawn": self.drawn, "rounds": self.rounds}


Stop = AdaptiveStop | RepairStop


@dataclass(frozen=True)
class RepairRound:
    """One back-prompt: which batch failed, which candidate was shown, with which critiques."""

    round: int
    after: list[int]
    shown: int
    critiques: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"round": self.round, "after": self.after, "shown": self.shown, "critiques": self.critiques}


@dataclass(frozen=True)
class Degraded:
    """Fewer candidates were compared than the request asked for (some draws failed, or the
    upstream returned fewer choices): the answer stands, but on thinner evidence."""

    requested: int
    drawn: int
    failed: int  # upstream calls that failed
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "drawn": self.drawn, "failed": self.failed, "why": self.why}


@dataclass
class StepsEvidence:
    """`its.search_steps`: what a search over reasoning steps did."""

    method: str  # beam | mcts
    calls: int  # sampler calls (expansions, rollouts, finishes)
    nodes: int  # tree nodes, root included
    depth: int  # deepest node
    chains: int  # complete chains handed to the select stages
    best_scores: list[float]  # the best chain's step scores, in order
    best_score: float | None  # its path score
    stopped: str | None = None  # a spend cap or failed calls ended the search early
    errors: int = 0  # failed calls
    guard: dict[str, Any] | None = None  # the signal guard's verdict (decision, reason, concordance ...)
    score: str = "confidence"  # the step scorer
    pruned: int = 0  # score: check: partial chains a checker rejected (their branches dropped)
    rejected: int = 0  # score: check: complete chains a checker rejected (kept, ranked last)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "calls": self.calls, "nodes": self.nodes, "depth": self.depth,
                               "chains": self.chains, "best_scores": [round(s, 4) for s in self.best_scores],
                               "best_score": None if self.best_score is None else round(self.best_score, 4)}
        if self.stopped is not None:
            out["stopped"] = self.stopped
        if self.errors:
            out["errors"] = self.errors
        if self.guard is not None:
            out["guard"] = self.guard
        out["score"] = self.score
        if self.score == "check":
            out |= {"pruned": self.pruned, "rejected": self.rejected}
        return out


@dataclass
class Selection:
    """What a route's pipeline decided."""

    winner: Candidate | None
    candidates: list[Candidate]
    strategy: str
    votes: dict[str, float] = field(default_factory=dict)
    tie: bool = False
    verified: bool | None = None  # None: no hard check ran
    reasons: list[str] = field(default_factory=list)
    agreement: float | None = None  # a picker's winner share of the votes
    rounds: list[RepairRound] = field(default_factory=list)
    stop: Stop | None = None  # why drawing stopped early (adaptive rule or spend cap)
    search: dict[str, Any] | None = None  # the augmenting-string search's allocation (`its.search`)
    disagreements: int | None = None  # judge vs hard checks; None when no hard check ran
    fallback: dict[str, str] | None = None  # the selector had nothing to select on: what happened instead
    steps: StepsEvidence | None = None  # the search over reasoning steps (`its.search_steps`)
    degraded: Degraded | None = None  # fewer candidates compared than requested

    def extras(self) -> dict[str, Any]:
        """The stage evidence for the `its` block, as JSON (besides votes, agreement, verified)."""
        out: dict[str, Any] = {}
        if self.fallback is not None:
            out["fallback"] = self.fallback
        if self.degraded is not None:
            out["degraded"] = self.degraded.as_dict()
        if self.disagreements is not None:
            out["disagreements"] = self.disagreements
        if self.search is not None:
            out["search"] = self.search
        if self.steps is not None:
            out["search_steps"] = self.steps.as_dict()
        out["rounds"] = [r.as_dict() for r in self.rounds]
        if self.stop is not None:
            out["stop"] = self.stop.as_dict()
        return out
