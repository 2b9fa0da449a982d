"""The signal guard of a step search: does the scorer carry signal on *this* request? Pure (no I/O).

A search steered by a scorer that says nothing (flat or random logprobs) is worse than plain
sampling: it spends its tokens on a few correlated branches chosen at random. So before trusting
the scorer, the search draws a few independent complete chains (the probe, which also serve as
candidates) and tests the scorer on them against the only label available inside a request,
answer agreement: a chain whose answer more of the other chains share should score higher.

The statistic is a concordance (AUC generalised to an ordinal label): over the pairs of probe
chains whose agreement counts differ, the share in which the more agreed-with chain has the higher
score (score ties count one half). Its one-sided p-value comes from a permutation test (scores
shuffled over the chains: what a scorer without signal would reach), so a handful of chains that
happen to line up do not pass: the guard trusts the scorer when p <= `alpha`. Otherwise the rest
of the budget goes to independent samples, and the candidates are ranked by agreement (a vote). When every probe chain
gives the same answer, the search stops there: more compute would not change the answer.

The budget is the same either way: the search's expected tokens are estimated from the probe's
own sizes (prompt, chain length, steps per chain), and the fallback draws that many tokens' worth
of chains, so a guarded route costs about the same whichever way its guard decides.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from itsproxy.strategies.types import SpecError

GUARD_KEYS = {"chains", "alpha"}
PERMUTATIONS = 500


@dataclass(frozen=True)
class GuardSpec:
    chains: int = 8  # probe chains, drawn in one call
    alpha: float = 0.05  # the permutation test's level: the rate a signal-less scorer is trusted


def parse_guard(raw: Any, path: str, score: str) -> GuardSpec | None:
    """`guard: probe | off | {chains, alpha}`; default probe for `score: confidence`, off otherwise."""
    if raw is None:
        raw = "probe" if score == "confidence" else "off"
    if raw == "off":
        return None
    if raw == "probe":
        return GuardSpec()
    if not isinstance(raw, dict):
        raise SpecError(path, f"must be probe, off or {{chains, alpha}}, got {raw!r}")
    for key in raw:
        if key not in GUARD_KEYS:
            raise SpecError(f"{path}.{key}", f"unknown key (known: {', '.join(sorted(GUARD_KEYS))})")
    chains, alpha = raw.get("chains", GuardSpec.chains), raw.get("alpha", GuardSpec.alpha)
    if isinstance(chains, bool) or not isinstance(chains, int) or chains < 3:
        raise SpecError(f"{path}.chains", f"must be an integer >= 3, got {chains!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise SpecError(f"{path}.alpha", f"must be a number in (0, 1), got {alpha!r}")
    return GuardSpec(chains=chains, alpha=float(alpha))


@dataclass(frozen=True)
class Verdict:
    decision: str  # search | sample | stop
    reason: str
    concordance: float | None
    pairs: int
    p_value: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decision": self.decision, "reason": self.reason, "pairs": self.pairs}
        if self.concordance is not None:
            out["concordance"] = round(self.concordance, 4)
        if self.p_value is not None:
            out["p_value"] = round(self.p_value, 4)
        return out


def agreement(answers: list[str | None]) -> list[int]:
    """How many other chains share each chain's answer (a chain without an answer: 0)."""
    counts = Counter(a for a in answers if a is not None)
    return [counts[a] - 1 if a is not None else 0 for a in answers]


def concordance(scores: list[float], agree: list[int]) -> tuple[float | None, int]:
    """(the share of concordant pairs among pairs with different agreement, the number of such pairs)."""
    hits, pairs = 0.0, 0
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            if agree[i] == agree[j]:
                continue
            pairs += 1
            hi, lo = (i, j) if agree[i] > agree[j] else (j, i)
            hits += 1.0 if scores[hi] > scores[lo] else 0.5 if scores[hi] == scores[lo] else 0.0
    return (hits / pairs if pairs else None), pairs


def permutation_p(scores: list[float], agree: list[int], observed: float) -> float:
    """One-sided p-value of `observed` concordance: the share of score shuffles reaching it
    (a fixed-seed shuffle: the same probe gives the same verdict)."""
    rng = random.Random(0)
    shuffled, hits = list(scores), 0
    for _ in range(PERMUTATIONS):
        rng.shuffle(shuffled)
        conc, _ = concordance(shuffled, agree)
        hits += conc is not None and conc >= observed - 1e-12
    return (1 + hits) / (1 + PERMUTATIONS)


def judge_signal(spec: GuardSpec, scores: list[float | None], answers: list[str | None]) -> Verdict:
    """Whether to spend the rest of the budget on the search (the scorer ranks like agreement does)."""
    given = [a for a in answers if a is not None]
    if len(given) == len(answers) and len(set(given)) == 1:
        return Verdict("stop", f"all {len(answers)} probe chains agree", None, 0)
    if any(s is None for s in scores):
        return Verdict("sample", "the scorer gave no score to some probe chains", None, 0)
    values = [s for s in scores if s is not None]
    agree = agreement(answers)
    conc, pairs = concordance(values, agree)
    if conc is None:
        return Verdict("sample", "no answer agreement among the probe chains to test the scorer on", None, 0)
    p = permutation_p(values, agree, conc)
    if p > spec.alpha:
        return Verdict("sample", f"the scorer does not rank agreed answers reliably higher "
                                 f"(concordance {conc:.2f}, p {p:.3f} > {spec.alpha:g})", conc, pairs, p)
    return Verdict("search", f"the scorer ranks agreed answers higher (concordance {conc:.2f}, p {p:.3f})",
                   conc, pairs, p)


@dataclass(frozen=True)
class Sizes:
    """What the probe measured: the prompt's tokens, a chain's tokens and steps."""

    prompt: float
    chain: float
    steps: float


def search_tokens(method: str, width: int, expansions: int, max_depth: int, rollouts: int, s: Sizes) -> float:
    """The search's expected tokens (prompts included), from the probe's sizes."""
    depth = max(1.0, s.steps)
    step = s.chain / depth
    if method == "mcts":
        per = 2 * s.prompt + 3 * step + expansions * step + max(depth - 2, 0) * step  # expand at ~1, roll out
        return rollouts * per
    levels = int(min(math.ceil(depth), max_depth))
    total = 0.0
    for d in range(levels):
        calls = 1 if d == 0 else width
        total += calls * (s.prompt + d * step + expansions * step)
    if depth > max_depth:  # survivors written to the end
        total += width * (s.prompt + max_depth * step + (depth - max_depth) * step)
    return total


def fallback_chains(estimate: float, s: Sizes, cap: int) -> int:
    """Independent chains worth the search's tokens (one call: the prompt is paid once)."""
    if s.chain <= 0:
        return 0
    return max(0, min(cap, round((estimate - s.prompt) / s.chain)))
