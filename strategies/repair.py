"""LLM-Modulo back-prompting: when nothing passes the sound checks, show the
model a failed answer and the checkers' critiques, and draw a new batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from itsproxy.strategies.types import Candidate, SpecError

DEFAULT_TEMPLATE = (
    "Your answer did not pass verification. The checker said:\n{critiques}\n\n"
    "Fix the problems and answer the original request again, completely."
)


@dataclass
class RepairSpec:
    rounds: int
    n: int | None = None  # batch size of repair rounds; default: the route's n
    template: str = DEFAULT_TEMPLATE


def parse_repair(raw: Any, path: str) -> RepairSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SpecError(path, "must be a mapping {rounds, n?, template?}")
    for key in raw:
        if key not in ("rounds", "n", "template"):
            raise SpecError(f"{path}.{key}", "unknown key (known: rounds, n, template)")
    rounds = raw.get("rounds", 1)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise SpecError(f"{path}.rounds", "must be an integer >= 0")
    n = raw.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise SpecError(f"{path}.n", "must be an integer >= 1")
    template = raw.get("template", DEFAULT_TEMPLATE)
    if not isinstance(template, str) or "{critiques}" not in template:
        raise SpecError(f"{path}.template", "must be a string containing {critiques}")
    return RepairSpec(rounds, n, template)


def _failed_to_show(batch: list[Candidate]) -> Candidate:
    """The failed candidate whose answer most of the batch shares: fixing it helps most."""
    failed = [c for c in batch if c.failed_check] or batch
    counts: dict[str | None, int] = {}
    for c in failed:
        counts[c.answer] = counts.get(c.answer, 0) + 1
    return max(failed, key=lambda c: (counts[c.answer], -c.index))


def backprompt(spec: RepairSpec, messages: list[dict[str, Any]], batch: list[Candidate],
               ) -> tuple[list[dict[str, Any]], int, list[str]]:
    """The client's conversation, the failed answer as the assistant turn, then the critiques.

    Returns the new conversation, the index of the candidate shown, and the critiques sent.
    """
    shown = _failed_to_show(batch)
    critiques = [v.critique or f"{v.checker} failed" for v in shown.verdicts if v.hard and not v.passed]
    text = spec.template.replace("{critiques}", "\n".join(f"- {c}" for c in critiques) or "- (no detail)")
    assistant = {"role": "assistant", "content": _as_text(shown.message)}
    return [*messages, assistant, {"role": "user", "content": text}], shown.index, critiques


def _as_text(message: dict[str, Any]) -> str:
    # An assistant turn with tool_calls must be followed by tool results, so a
    # failed tool call is shown as text instead.
    parts = [message.get("content") or ""]
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        parts.append(f"(called {fn.get('name')} with {fn.get('arguments')})")
    return "\n".join(p for p in parts if p)
