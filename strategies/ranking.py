"""The route's own order over its candidates, for a client that asks for more than one.

A client's `n=k` (or `best_of` on completions) on a scaling route gets the k best
DISTINCT answers by the route's ranking: the winner first, then verified before
unverified (a failed hard check last), then by the votes their answer got, then
by score, then in draw order. Distinct means a different extracted answer (or a
different text where nothing was extracted). When there are fewer distinct answers
than asked, the rest are the next candidates in the same order, repeats allowed:
the client asked for k choices, and never gets more than were drawn.
"""

from __future__ import annotations

from itsproxy.strategies.types import Candidate, Selection


def _key(c: Candidate, sel: Selection) -> tuple[int, float, float, int]:
    checked = 0 if c.verified else (2 if c.failed_check else 1)
    votes = sel.votes.get(c.answer, 0.0) if c.answer is not None else 0.0
    score = c.scores.get("score", 0.0)
    return checked, -votes, -score, c.index


def _identity(c: Candidate) -> str:
    return f"a:{c.answer}" if c.answer is not None else f"t:{c.text}"


def ranked(sel: Selection, k: int) -> list[Candidate]:
    """Up to k candidates, best first (the winner leads)."""
    if sel.winner is None:
        return []
    if k <= 1:  # the common case: the winner alone, no sort
        return [sel.winner]
    rest = sorted((c for c in sel.candidates if c is not sel.winner), key=lambda c: _key(c, sel))
    order = [sel.winner, *rest]
    seen: set[str] = set()
    distinct: list[Candidate] = []
    repeats: list[Candidate] = []
    for c in order:
        identity = _identity(c)
        if identity in seen:
            repeats.append(c)
        else:
            seen.add(identity)
            distinct.append(c)
    return (distinct + repeats)[:k]
