"""The data that crosses the boundary between the proxy and the strategies.

Strategies never do HTTP themselves: they ask a `Sampler` for completions and
hand back a `Selection`. Everything here is plain data, so the selection logic
can be tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


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
class Selection:
    """What a route's pipeline decided."""

    winner: Candidate | None
    candidates: list[Candidate]
    strategy: str
    votes: dict[str, float] = field(default_factory=dict)
    tie: bool = False
    verified: bool | None = None  # None: no hard check ran
    reasons: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # stage extras: stop, rounds, search ...


class Sampler(Protocol):
    """Draws completions for one request; bound to its ledger and deadline.

    Raises `SampleError` only when no choice at all could be had; a partial
    batch is returned as what it is.
    """

    async def sample(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str,
        n: int = 1,
        phase: str = "generate",
        params: dict[str, Any] | None = None,
    ) -> list[Sample]: ...
