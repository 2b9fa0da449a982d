"""Building the client's answer: one ordinary chat completion plus the `its` evidence."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from itsproxy.proxy.config import Route
from itsproxy.proxy.metering.ledger import Ledger, Tokens
from itsproxy.strategies.ranking import ranked
from itsproxy.strategies.types import Candidate, Selection


@dataclass
class Outcome:
    """A finished scaling request, ready to be rendered as JSON or SSE."""

    route: Route
    model: str  # what the client asked for
    selection: Selection
    ledger: Ledger
    id: str
    created: int
    messages: list[dict[str, Any]]  # the client's conversation (for traces)
    params: dict[str, Any] = field(default_factory=dict)  # the client's forwarded parameters (for traces)
    overrides: dict[str, Any] = field(default_factory=dict)  # what the route overrode of the client's request
    cache: dict[str, Any] | None = None  # a response cache hit: {"hit", "saved_tokens", "age_s"}

    def ranked(self, k: int) -> list[Candidate]:
        """The k best distinct candidates by the route's ranking (strategies/ranking.py), winner first."""
        return ranked(self.selection, k)

    @property
    def winner(self) -> Candidate:
        assert self.selection.winner is not None
        return self.selection.winner

    def selected_tokens(self) -> Tokens:
        s = self.winner.sample
        return Tokens(s.prompt_tokens, s.completion_tokens)

    def usage(self) -> dict[str, int]:
        tokens = self.selected_tokens() if self.route.usage_report == "selected" else self.ledger.total()
        return tokens.as_dict()

    def its(self) -> dict[str, Any]:
        sel = self.selection
        out: dict[str, Any] = {
            "route": self.route.name,
            "strategy": sel.strategy,
            "candidates": len(sel.candidates),
            "selected": self.winner.index,
            "votes": sel.votes,
            "tie": sel.tie,
            "usage": self.ledger.usage_breakdown(self.selected_tokens()),
            "reasons": sel.reasons,
            "evidence": [evidence(c) for c in sel.candidates],
        }
        if sel.agreement is not None:
            out["agreement"] = round(sel.agreement, 4)
        if sel.verified is not None:
            out["verified"] = sel.verified
        if self.overrides:
            out["overrides"] = self.overrides
        if self.cache is not None:
            out["cache"] = self.cache
        for key, value in sel.extras().items():
            out.setdefault(key, value)
        return out

    def headers(self) -> dict[str, str]:
        h = {"x-its-route": self.route.name, "x-its-candidates": str(len(self.selection.candidates)),
             "x-its-extra-tokens": str(self.ledger.total().total_tokens - self.selected_tokens().total_tokens)}
        cost = self.ledger.cost_usd()
        h["x-its-cost-usd"] = "unknown" if cost is None else f"{cost:.8f}"
        if self.selection.verified is not None:
            h["x-its-verified"] = "true" if self.selection.verified else "false"
        if self.cache is not None:
            h["x-its-cache"] = "hit"
        return h


def evidence(c: Candidate) -> dict[str, Any]:
    out: dict[str, Any] = {"index": c.index, "round": c.round, "model": c.model, "answer": c.answer,
                           "finish_reason": c.sample.finish_reason,
                           "tokens": {"prompt": c.sample.prompt_tokens, "completion": c.sample.completion_tokens}}
    if c.augment is not None:
        out["augment"] = c.augment
        out["augment_index"] = c.augment_index
    if c.verdicts:
        out["verdicts"] = [{"checker": v.checker, "passed": v.passed, "critique": v.critique, "hard": v.hard}
                           for v in c.verdicts]
        if c.hard_verdicts:
            out["verified"] = c.verified
    if c.scores:
        out["scores"] = {k: round(v, 6) for k, v in c.scores.items()}
    if c.notes:
        out["notes"] = c.notes
    return out


def passthrough_its(route: Route, ledger: Ledger, candidates: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"route": route.name, "strategy": "passthrough"}
    if candidates is not None:
        out["candidates"] = candidates
    out["usage"] = ledger.usage_breakdown(ledger.total())
    return out


def passthrough_headers(route: Route, ledger: Ledger, candidates: int) -> dict[str, str]:
    cost = ledger.cost_usd()
    return {"x-its-route": route.name, "x-its-candidates": str(candidates), "x-its-extra-tokens": "0",
            "x-its-cost-usd": "unknown" if cost is None else f"{cost:.8f}"}


def new_id(prefix: str = "chatcmpl") -> tuple[str, int]:
    return f"{prefix}-its-{secrets.token_hex(12)}", int(time.time())
