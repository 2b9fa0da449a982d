"""Dollars beyond one plain call, and dollars adaptive stopping saved: the two figures an
operator weighs inference-time compute by.

- extra: what the request cost minus what ONE plain call returning the selected answer
  would have cost (its prompt and completion tokens at the winner's model price). A failed
  request has no answer, so all of its spend is extra (as with `extra_tokens`).
- saved: an adaptive route stopped before its maximum draws; the undrawn candidates would
  have cost about the drawn ones' mean (generate-phase cost / candidates drawn) each.

Only priced calls count (an unknown price is never a zero: it is simply not in the sum).
"""

from __future__ import annotations

from itsproxy.proxy.metering.ledger import CallRecord, Tokens
from itsproxy.proxy.metering.pricing import Prices


def priced(calls: list[CallRecord]) -> float:
    return sum(c.cost_usd or 0.0 for c in calls)


def extra_cost(calls: list[CallRecord], selected: Tokens, prices: Prices | None) -> float:
    """Priced spend beyond one plain call for `selected` (0 when no answer was selected: all extra)."""
    single = prices.cost(selected.prompt_tokens, selected.completion_tokens) if prices is not None else None
    return max(0.0, priced(calls) - (single or 0.0))


def saved_cost(calls: list[CallRecord], drawn: int, saved: int) -> float:
    """Estimated cost of `saved` undrawn candidates at the mean generate cost of the `drawn` ones."""
    if drawn <= 0 or saved <= 0:
        return 0.0
    return saved * priced([c for c in calls if c.phase == "generate"]) / drawn
