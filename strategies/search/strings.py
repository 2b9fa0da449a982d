"""Search over augmenting ("CoT") strings: a multi-armed bandit per route. Pure (no I/O).

Each augmenting string is an arm. A request's batch of n samples is split across the arms
(UCB1 or Thompson sampling), with a `min_share` floor so no string is ever starved; after
selection every candidate pays its string a reward: 1 if it passed the hard checks (when
any ran), else 1 if its answer equals the winner's, else 0. The I/O side (the SQLite
store, the pipeline hooks) lives in `proxy/storage/search_store.py` and `strategies/search/strings_run.py`.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any

from itsproxy.strategies.types import Candidate, Selection, SpecError

POLICIES = ("ucb", "thompson")
SEARCH_KEYS = {"policy", "explore", "min_share", "prior", "path"}


@dataclass
class ArmStats:
    index: int
    text: str
    pulls: int = 0
    reward: float = 0.0  # sum of rewards over `pulls` candidates

    @property
    def mean(self) -> float | None:
        return self.reward / self.pulls if self.pulls else None


@dataclass
class SearchSpec:
    arms: list[str]  # the route's augmenting strings, in config order
    policy: str = "ucb"
    explore: float = 1.0
    min_share: float = 0.1
    prior: tuple[float, float] = (1.0, 1.0)  # Beta(a, b) prior for thompson
    path: str | None = None  # SQLite file; None: <server.state_dir>/search.sqlite3


def arm_hash(text: str) -> str:
    """Identifies an arm's text in the store, so editing a string in config starts it afresh."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- config


def _number(value: Any, path: str, lo: float, hi: float | None = None) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= lo
    if not ok or (hi is not None and value > hi):
        bound = f"in [{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
        raise SpecError(path, f"must be a number {bound}, got {value!r}")
    return float(value)


def parse_search(raw: dict[str, Any], path: str) -> SearchSpec | None:
    """The `augment_search` of a route's `generate` mapping `raw` (at `path`); None if absent.

    Takes the whole generate mapping because validity depends on the `augment` list.
    """
    body = raw.get("augment_search")
    if body is None:
        return None
    p = f"{path}.augment_search"
    if not isinstance(body, dict):
        raise SpecError(p, "must be a mapping {policy, explore, min_share, prior, path}")
    for key in body:
        if key not in SEARCH_KEYS:
            raise SpecError(f"{p}.{key}", f"unknown key (known: {', '.join(sorted(SEARCH_KEYS))})")
    arms = raw.get("augment") or []
    if not isinstance(arms, list) or len(arms) < 2:
        raise SpecError(f"{path}.augment", "augment_search needs at least 2 augmenting strings to choose among")
    policy = body.get("policy", "ucb")
    if policy not in POLICIES:
        raise SpecError(f"{p}.policy", f"must be one of {', '.join(POLICIES)}, got {policy!r}")
    explore = _number(body.get("explore", 1.0), f"{p}.explore", 0.0)
    min_share = _number(body.get("min_share", 0.1), f"{p}.min_share", 0.0, 1.0 / len(arms))
    prior = body.get("prior", [1, 1])
    if not isinstance(prior, list) or len(prior) != 2:
        raise SpecError(f"{p}.prior", "must be a list [a, b] of two numbers > 0")
    a, b = (_number(x, f"{p}.prior[{i}]", 1e-9) for i, x in enumerate(prior))
    store_path = body.get("path")
    if store_path is not None and (not isinstance(store_path, str) or not store_path):
        raise SpecError(f"{p}.path", "must be a file path or null")
    return SearchSpec(list(arms), policy, explore, min_share, (a, b), store_path)


# ---------------------------------------------------------------- allocation


def request_rng(route: str, seed: int) -> random.Random:
    """The allocation's randomness for one request: a function of (route, seed) only."""
    return random.Random(f"augment_search|{route}|{seed}")



def floors(k: int, n: int, min_share: float, rng: random.Random) -> list[int]:
    """At least min_share of n samples per arm, in expectation: fractions round up at random."""
    want = min_share * n
    out = [int(want) + (1 if rng.random() < want - int(want) else 0) for _ in range(k)]
    while sum(out) > n:  # random round-ups can overshoot n when min_share is near 1/k
        out[max(range(k), key=lambda i: (out[i], i))] -= 1
    return out


def _ucb_pick(stats: list[ArmStats], alloc: list[int], explore: float) -> int:
    # Planned samples count as pulls (without reward yet), so one batch spreads out
    # the way n sequential UCB1 steps would if their rewards were still unknown.
    pulls = [s.pulls + a for s, a in zip(stats, alloc)]
    unpulled = [i for i, p in enumerate(pulls) if p == 0]
    if unpulled:
        return unpulled[0]
    total = sum(pulls)

    def score(i: int) -> float:
        mean = stats[i].mean or 0.0
        return mean + explore * math.sqrt(2 * math.log(total) / pulls[i])

    return max(range(len(stats)), key=lambda i: (score(i), -i))


def _thompson_pick(stats: list[ArmStats], prior: tuple[float, float], rng: random.Random) -> int:
    a, b = prior
    draws = [rng.betavariate(a + s.reward, b + max(s.pulls - s.reward, 0.0)) for s in stats]
    return max(range(len(stats)), key=lambda i: (draws[i], -i))


def allocate(policy: str, stats: list[ArmStats], n: int, rng: random.Random, explore: float = 1.0,
             min_share: float = 0.0, prior: tuple[float, float] = (1.0, 1.0)) -> list[int]:
    """How many of the n samples each arm gets; sums to n. Deterministic given `rng`'s seed."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}")
    alloc = floors(len(stats), n, min_share, rng)
    for _ in range(n - sum(alloc)):
        i = _ucb_pick(stats, alloc, explore) if policy == "ucb" else _thompson_pick(stats, prior, rng)
        alloc[i] += 1
    return alloc


# ---------------------------------------------------------------- rewards


def reward_of(candidate: Candidate, winner_answer: str | None) -> float:
    if candidate.hard_verdicts:  # a sound check ran on it: that is the ground truth
        return 1.0 if candidate.verified else 0.0
    if candidate.answer is None or winner_answer is None:
        return 0.0
    return 1.0 if candidate.answer == winner_answer else 0.0


def rewards_for(selection: Selection, candidates: list[Candidate]) -> dict[int, tuple[int, float]]:
    """{arm index: (pulls, reward sum)} over `candidates` (those the search allocated)."""
    winner_answer = selection.winner.answer if selection.winner is not None else None
    out: dict[int, tuple[int, float]] = {}
    for c in candidates:
        if c.augment_index is None:
            continue
        pulls, total = out.get(c.augment_index, (0, 0.0))
        out[c.augment_index] = (pulls + 1, total + reward_of(c, winner_answer))
    return out


def describe(spec: SearchSpec, stats: list[ArmStats], allocation: list[int]) -> dict[str, Any]:
    """The `its.search` object: the allocation and the stats it was based on."""
    arms = [{"index": s.index, "text": s.text, "pulls": s.pulls,
             "mean_reward": None if s.mean is None else round(s.mean, 4)} for s in stats]
    return {"policy": spec.policy, "allocation": list(allocation), "arms": arms}
