"""The augmenting-string search as the pipeline sees it: `plan` before drawing the first
batch, `learn` after selection. The store is reached through the `ctx.search_stores` port
(the proxy's `storage/search_store.py`); without one the search still allocates (from no
data) but learns nothing. A store failure never fails the request: it is logged and the
request proceeds on what is known.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from itsproxy.strategies.ports import RunContext, SearchStore
from itsproxy.strategies.search.strings import ArmStats, SearchSpec, allocate, describe, request_rng, rewards_for
from itsproxy.strategies.types import Selection

log = logging.getLogger(__name__)


def _store(ctx: RunContext, spec: SearchSpec) -> SearchStore | None:
    return ctx.search_stores.get(spec.path) if ctx.search_stores is not None else None


def _rng(ctx: RunContext, store: SearchStore | None) -> random.Random:
    # The client's seed makes the allocation reproducible; otherwise a per-store counter
    # (still deterministic for a given sequence of requests in one process).
    seed = ctx.seed if ctx.seed is not None else (store.next_seed() if store is not None else 0)
    return request_rng(ctx.route, seed)


async def plan(ctx: RunContext, spec: SearchSpec, n: int) -> tuple[list[int] | None, dict[str, Any]]:
    """augment_counts for `generate.draw` (one count per string, summing to n) and the `its.search` info."""
    store = _store(ctx, spec)
    stats = [ArmStats(i, t) for i, t in enumerate(spec.arms)]
    error = None
    if store is not None:
        try:
            stats = await store.load(ctx.route, spec.arms)
        except Exception as exc:  # noqa: BLE001 - a broken state file must not fail requests
            log.warning("augment search: loading %s failed: %s", store.path, exc)
            error = f"state unavailable: {type(exc).__name__}"
    counts = allocate(spec.policy, stats, n, _rng(ctx, store), spec.explore, spec.min_share, spec.prior)
    info = describe(spec, stats, counts)
    if error:
        info["error"] = error
    ctx.search = info  # learn() copies it into the selection
    return counts, info


async def learn(ctx: RunContext, spec: SearchSpec, selection: Selection) -> None:
    """Credit each first-round candidate's string with its reward and store the totals.

    Repair rounds are left out: their prompts carry critiques, which would credit a string
    with the checker's help, and their share was not chosen by the search.
    """
    if ctx.search is not None:
        selection.search = ctx.search
    updates = rewards_for(selection, [c for c in selection.candidates if c.round == 0])
    store = _store(ctx, spec)
    if not updates or store is None:
        return
    try:
        await store.record(ctx.route, spec.arms, updates)
    except Exception as exc:  # noqa: BLE001 - the answer is already chosen; losing one update is acceptable
        log.warning("augment search: recording to %s failed: %s", store.path, exc)
