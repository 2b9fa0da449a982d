"""Building the client's answer: one ordinary chat completion plus the `its` evidence."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from itsproxy.proxy.config import Route
from itsproxy.proxy.metering.ledger import Ledger, Tokens
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
        return h

    def message(self) -> dict[str, Any]:
        return dict(self.winner.message)

    def body(self) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "message": self.message(),
                                  "finish_reason": self.winner.sample.finish_reason or "stop",
                                  "logprobs": self.winner.sample.logprobs}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [choice], "usage": self.usage(), "system_fingerprint": None, "its": self.its()}


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


def new_id() -> tuple[str, int]:
    return f"chatcmpl-its-{secrets.token_hex(12)}", int(time.time())


def chunk(id: str, created: int, model: str, delta: dict[str, Any] | None, finish: str | None = None,
          **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices, **extra}


def message_deltas(message: dict[str, Any], size: int = 48) -> list[dict[str, Any]]:
    """The selected message as stream deltas: content in pieces, tool calls whole."""
    deltas: list[dict[str, Any]] = []
    content = message.get("content")
    if isinstance(content, str):
        deltas += [{"content": content[i:i + size]} for i in range(0, len(content), size)]
    for i, call in enumerate(message.get("tool_calls") or []):
        deltas.append({"tool_calls": [{"index": i, "id": call.get("id"), "type": call.get("type", "function"),
                                       "function": call.get("function")}]})
    if message.get("refusal"):
        deltas.append({"refusal": message["refusal"]})
    return deltas
