"""Every upstream call made for a request, and the usage derived from them.

The ledger is the single source for the response's `usage`, the `its.usage`
breakdown and the Prometheus counters, so the three always agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CallRecord:
    id: int
    phase: str  # generate | judge | reward | check | repair | usc
    model: str  # model_list name
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float | None = None  # None: price unknown (never silently zero)
    latency_s: float = 0.0
    outcome: str = "ok"  # ok | error | cancelled
    estimated: bool = False  # counted with tiktoken, the upstream gave no usage
    output_unknown: bool = False  # it broke off: the upstream may have generated more than arrived
    choices: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Tokens:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass
class Ledger:
    calls: list[CallRecord] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def open(self, phase: str, model: str) -> CallRecord:
        """Start a record; the caller fills it in as the call progresses."""
        record = CallRecord(id=len(self.calls), phase=phase, model=model)
        self.calls.append(record)
        return record

    def total(self) -> Tokens:
        tokens = Tokens()
        for c in self.calls:
            tokens.add(c.prompt_tokens, c.completion_tokens)
        return tokens

    def by(self, key: str) -> dict[str, Tokens]:
        out: dict[str, Tokens] = {}
        for c in self.calls:
            out.setdefault(getattr(c, key), Tokens()).add(c.prompt_tokens, c.completion_tokens)
        return out

    def cost_usd(self) -> float | None:
        """Sum of call costs; None when any call that spent tokens has no known price."""
        total = 0.0
        for c in self.calls:
            if c.cost_usd is None:
                if c.total_tokens:
                    return None
                continue
            total += c.cost_usd
        return total

    @property
    def estimated(self) -> bool:
        return any(c.estimated for c in self.calls)

    @property
    def output_unknown(self) -> bool:
        """A call broke off (cut body or stream, cancelled, deadline): what it generated is unknown."""
        return any(c.output_unknown for c in self.calls)

    def usage_breakdown(self, selected: Tokens) -> dict[str, Any]:
        total = self.total()
        extra = Tokens(
            total.prompt_tokens - selected.prompt_tokens,
            total.completion_tokens - selected.completion_tokens,
        )
        cost = self.cost_usd()
        return {
            "selected": selected.as_dict(),
            "extra": extra.as_dict(),
            "total": total.as_dict(),
            "by_phase": {k: v.as_dict() for k, v in self.by("phase").items()},
            "by_model": {k: v.as_dict() for k, v in self.by("model").items()},
            "cost_usd": None if cost is None else round(cost, 10),
            "estimated": self.estimated,
            "calls": len(self.calls),
            "calls_by_outcome": _count(c.outcome for c in self.calls),
        }


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


@dataclass
class RequestReport:
    """One finished request, as the metrics and traces see it."""

    route: str
    status: int
    duration_s: float
    calls: list[CallRecord]
    selected: Tokens = field(default_factory=Tokens)
    extra_tokens: int = 0
    candidates: int = 0
    agreement: float | None = None  # winner's vote share, when a vote ran
    verified: bool | None = None  # None: no hard check ran
    judge_checker_disagreements: int = 0
    candidates_saved: int = 0  # adaptive stopping: max n minus drawn
    tokens_saved_estimate: int = 0
    passthrough: bool = False
    id: str = ""  # the response id (or the exchange's own, when there is no answer)
    key_id: str | None = None  # the client key's SHA-256 prefix (never the key), None without one
    degraded: bool = False  # fewer candidates compared than requested (its.degraded)
    extra_cost_usd: float = 0.0  # priced spend beyond one plain call for the selected answer (metering/spend.py)
    saved_cost_usd_estimate: float = 0.0  # adaptive stopping: undrawn candidates x the drawn ones' mean cost
    ttft_s: float | None = None  # streams: arrival to the answer's first byte leaving
