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

Step level, for more power from the same chains: one score per chain dilutes a wrong step's low
score with the chain's other steps, and gives few pairs. So where the chains are cut into scored
steps, the guard tests the steps instead, on the probe chains' trie: chains that wrote the same
steps so far are siblings at the next step, and a sibling step that more of them wrote (the
step-level agreement) should score higher. Each trie node with siblings that differ is a
stratum; the concordance is pooled over the strata's pairs, and the permutation shuffles scores
within each stratum only (so a score that drifts with depth, or a wrong chain's later steps,
cannot pass for signal). Where no stratum has a pair (every chain differs from its first step),
the chain-level test decides.

The probe is not wasted when the guard says "search": the probe chains are samples from the
root, so their first steps are the root's first layer (the beam skips its depth-0 call and
starts from 8 first steps instead of `expansions`; MCTS starts with each probe chain backed up as
a rollout through its first step). The budget is the same either way: the search's expected
tokens (less that first layer) are estimated from the probe's own sizes (prompt, chain length,
steps per chain), and the fallback draws that many tokens' worth of chains, so a guarded route
costs about the same whichever way its guard decides.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from itsproxy.strategies.types import SpecError

GUARD_KEYS = {"chains", "alpha"}
Stratum = tuple[list[float], list[int]]  # scores and agreement labels of observations comparable to each other
ProbeSteps = list[tuple[str, float | None]]  # a probe chain's steps: (text, score)
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
    level: str = "chain"  # what the test compared: chains or sibling steps

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decision": self.decision, "reason": self.reason, "pairs": self.pairs,
                               "level": self.level}
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


def pooled(strata: list[Stratum]) -> tuple[float | None, int]:
    """The concordance over every stratum's pairs (pairs never cross strata)."""
    hits, pairs = 0.0, 0
    for scores, agree in strata:
        conc, n = concordance(scores, agree)
        if conc is not None:
            hits, pairs = hits + conc * n, pairs + n
    return (hits / pairs if pairs else None), pairs


def permutation_p(strata: list[Stratum], observed: float) -> float:
    """One-sided p-value of `observed` pooled concordance: the share of within-stratum score
    shuffles reaching it (a fixed-seed shuffle: the same probe gives the same verdict)."""
    rng = random.Random(0)
    shuffled = [(list(scores), agree) for scores, agree in strata]
    hits = 0
    for _ in range(PERMUTATIONS):
        for scores, _ in shuffled:
            rng.shuffle(scores)
        conc, _ = pooled(shuffled)
        hits += conc is not None and conc >= observed - 1e-12
    return (1 + hits) / (1 + PERMUTATIONS)


def step_key(text: str) -> str:
    return " ".join(text.split()).lower()


def step_strata(chains: list[ProbeSteps]) -> list[Stratum]:
    """The sibling steps of the probe chains' trie: for each group of chains that wrote the same
    steps so far, their next steps' scores and how many others in the group wrote the same step."""
    strata: list[Stratum] = []
    keys = [[step_key(text) for text, _ in chain] for chain in chains]
    for d in range(max((len(k) for k in keys), default=0)):
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, k in enumerate(keys):
            if len(k) > d:
                groups.setdefault(tuple(k[:d]), []).append(i)
        for members in groups.values():
            counts = Counter(keys[i][d] for i in members)
            obs = [(score, counts[keys[i][d]] - 1) for i in members if (score := chains[i][d][1]) is not None]
            if len({a for _, a in obs}) > 1:
                strata.append(([s for s, _ in obs], [a for _, a in obs]))
    return strata


def judge_signal(spec: GuardSpec, scores: list[float | None], answers: list[str | None],
                 steps: list[ProbeSteps] | None = None) -> Verdict:
    """Whether to spend the rest of the budget on the search (the scorer ranks like agreement does):
    on sibling steps when `steps` has any, else on whole chains."""
    given = [a for a in answers if a is not None]
    if len(given) == len(answers) and len(set(given)) == 1:
        return Verdict("stop", f"all {len(answers)} probe chains agree", None, 0)
    strata = step_strata(steps) if steps is not None else []
    if strata:
        return _test(spec, strata, "step")
    if any(s is None for s in scores):
        return Verdict("sample", "the scorer gave no score to some probe chains", None, 0)
    return _test(spec, [([s for s in scores if s is not None], agreement(answers))], "chain")


def _test(spec: GuardSpec, strata: list[Stratum], level: str) -> Verdict:
    conc, pairs = pooled(strata)
    if conc is None:
        return Verdict("sample", "no answer agreement among the probe chains to test the scorer on", None, 0,
                       level=level)
    p = permutation_p(strata, conc)
    what = "agreed answers" if level == "chain" else "steps more probe chains share"
    if p > spec.alpha:
        return Verdict("sample", f"the scorer does not rank {what} reliably higher "
                                 f"(concordance {conc:.2f} over {pairs} pairs, p {p:.3f} > {spec.alpha:g})",
                       conc, pairs, p, level)
    return Verdict("search", f"the scorer ranks {what} higher (concordance {conc:.2f} over {pairs} pairs, "
                             f"p {p:.3f})", conc, pairs, p, level)


@dataclass(frozen=True)
class Sizes:
    """What the probe measured: the prompt's tokens, a chain's tokens and steps."""

    prompt: float
    chain: float
    steps: float


def search_tokens(method: str, width: int, expansions: int, max_depth: int, rollouts: int, s: Sizes,
                  seeded: bool = False) -> float:
    """The search's expected tokens (prompts included), from the probe's sizes; `seeded`: the beam's
    first layer comes from the probe chains' first steps (no call at depth 0)."""
    depth = max(1.0, s.steps)
    step = s.chain / depth
    if method == "mcts":
        per = 2 * s.prompt + 3 * step + expansions * step + max(depth - 2, 0) * step  # expand at ~1, roll out
        return rollouts * per
    levels = int(min(math.ceil(depth), max_depth))
    total = 0.0
    for d in range(1 if seeded else 0, levels):
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
