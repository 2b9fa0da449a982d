"""Adaptive compute: when to stop drawing candidates (pure logic, no I/O).

Rules, chosen per route with `generate.adaptive: {rule, confidence, window, min, batch}`:
- `beta` (Adaptive-Consistency, Aggarwal et al. 2023): with v1, v2 the votes of the
  two leading answers, stop once P(p > 1/2 | p ~ Beta(v1+1, v2+1)) >= confidence.
- `window` (Early-Stopping Self-Consistency, Li et al. 2024): stop once the last
  `window` extracted answers agree.
- `predictive` (ours): stop once the posterior predictive probability that the
  current leader is still the majority answer after all `max_n` draws reaches
  `confidence`. It targets what the full vote would say, so it stops early when
  the remaining draws cannot (or are very unlikely to) change the outcome.
- `off`: no adaptive stopping (parse_adaptive returns None; draw n at once).

Probabilities are computed exactly with `Fraction` (integer Beta parameters make
every tail a finite sum), and `confidence` is read as the decimal the user wrote,
so a posterior equal to the threshold stops, without float drift at the boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import comb
from typing import Any

from itsproxy.strategies.types import AdaptiveStop, Candidate, SpecError

RULES = ("beta", "window", "predictive", "off")
KEYS = ("rule", "confidence", "window", "min", "batch", "keep_sampling_verified", "mode")
MODES = ("batch", "stream", "stream_n")


@dataclass(frozen=True)
class AdaptiveSpec:
    rule: str = "beta"
    confidence: float = 0.95
    window: int = 4
    min: int = 2  # never stop before this many candidates with an extracted answer
    batch: int = 2  # smallest number of candidates drawn per round
    keep_sampling_verified: bool = False
    # batch: draw `batch` at a time (native n per batch), decide between batches.
    # stream: keep `batch` single-candidate streams in flight, decide as each one
    # finishes, and close the rest the moment the rule is met.
    # stream_n: one streaming call with n = max; decide as its choices finish, then close it.
    mode: str = "batch"

    @property
    def threshold(self) -> Fraction:
        # repr gives the shortest decimal that round-trips: 0.95 -> 19/20, not the binary float.
        return Fraction(repr(self.confidence))


@dataclass(frozen=True)
class Decision:
    stop: bool
    reason: str  # confident | agreement | verified | max_n | below_min | not_confident | no_agreement
    posterior: float | None = None
    rule: str = ""


def _int(raw: dict[str, Any], key: str, path: str, default: int, minimum: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{path}.{key}", f"must be an integer >= {minimum}, got {value!r}")
    return value


def parse_adaptive(raw: Any, path: str) -> AdaptiveSpec | None:
    """Validate `generate.adaptive`; None means draw all n at once (absent or `rule: off`)."""
    if raw is None:
        return None
    if isinstance(raw, str):  # shorthand: `adaptive: beta`
        raw = {"rule": raw}
    if not isinstance(raw, dict):
        raise SpecError(path, f"must be a mapping {{{', '.join(KEYS)}}} or a rule name")
    for key in raw:
        if key not in KEYS:
            raise SpecError(f"{path}.{key}", f"unknown key (known: {', '.join(KEYS)})")
    rule = raw.get("rule", "beta")
    if rule not in RULES:
        raise SpecError(f"{path}.rule", f"must be one of {', '.join(RULES)}, got {rule!r}")
    conf = raw.get("confidence", 0.95)
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.5 < conf < 1:
        raise SpecError(f"{path}.confidence", f"must be a number in (0.5, 1), got {conf!r}")
    keep = raw.get("keep_sampling_verified", False)
    if not isinstance(keep, bool):
        raise SpecError(f"{path}.keep_sampling_verified", f"must be true or false, got {keep!r}")
    mode = raw.get("mode", "batch")
    if mode not in MODES:
        raise SpecError(f"{path}.mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    spec = AdaptiveSpec(rule, float(conf), _int(raw, "window", path, 4, 2), _int(raw, "min", path, 2, 1),
                        _int(raw, "batch", path, 2, 1), keep, mode)
    return None if rule == "off" else spec


# ---------------------------------------------------------------- exact probabilities

def beta_tail(a: int, b: int) -> Fraction:
    """P(X > 1/2) for X ~ Beta(a, b), integers a, b >= 1, exactly.

    Order statistics: X is distributed as the a-th smallest of a+b-1 uniforms, so
    X > 1/2 iff at most a-1 of them fall below 1/2: P(Binomial(a+b-1, 1/2) <= a-1).
    """
    n = a + b - 1
    return Fraction(sum(comb(n, k) for k in range(a)), 2 ** n)


def posterior(v1: int, v2: int) -> float:
    """Adaptive-Consistency's stopping statistic: P(leader's share > runner-up's share)."""
    return float(beta_tail(v1 + 1, v2 + 1))


def final_majority(v1: int, v2: int, answered: int, remaining: int) -> Fraction:
    """P(the current leader still wins the vote once `remaining` more candidates are drawn).

    The leader's rate p gets the posterior Beta(v1+1, others+1) (leader vs every other
    answer, uniform prior); L, its share of the remaining draws, is Beta-binomial.
    Conservatively every non-leader draw goes to the runner-up (the strongest
    challenger) and a final tie counts as a loss, so this is a lower bound on the
    probability that the full-n vote agrees with stopping now.
    """
    if remaining <= 0:
        return Fraction(1)
    need = (v2 - v1 + remaining) // 2 + 1  # smallest L with v1 + L > v2 + (remaining - L)
    if need <= 0:
        return Fraction(1)
    a, b, m = v1 + 1, answered - v1 + 1, remaining
    # Beta-binomial pmf with integer Beta parameters, in integers (one division at the end):
    # P(L=k) = C(m,k) * rising(a,k) * rising(b,m-k) / rising(a+b,m), rising(x,k) = x(x+1)...(x+k-1).
    rb = [1]
    for j in range(m):
        rb.append(rb[-1] * (b + j))
    lose, ra = 0, 1
    for k in range(min(need, m + 1)):
        lose += comb(m, k) * ra * rb[m - k]
        ra *= a + k
    return 1 - Fraction(lose, _rising(a + b, m))


def _rising(x: int, m: int) -> int:
    """rising(x, m) = x (x+1) ... (x+m-1)."""
    out = 1
    for j in range(m):
        out *= x + j
    return out


# ---------------------------------------------------------------- stopping decisions

def _counts(answers: Iterable[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    return counts


def leaders(answers: Iterable[str | None]) -> tuple[int, int, int]:
    """(v1, v2, answered): votes of the two leading answers and how many answers were extracted."""
    counts = _counts(answers)
    top = sorted(counts.values(), reverse=True) + [0, 0]
    return top[0], top[1], sum(counts.values())


def _streak(answers: Sequence[str | None]) -> int:
    """Length of the run of equal answers at the end (None = no answer, skipped: it casts
    no vote in the final tally either, so it neither breaks nor extends agreement)."""
    seen = [a for a in answers if a is not None]
    n = 0
    for a in reversed(seen):
        if a != seen[-1]:
            break
        n += 1
    return n


def _met(spec: AdaptiveSpec, answers: Sequence[str | None], drawn: int, max_n: int) -> tuple[bool, Fraction | None]:
    """Whether the rule's condition holds (min and max aside), and its statistic."""
    if spec.rule == "window":
        return _streak(answers) >= spec.window, None
    v1, v2, answered = leaders(answers)
    if spec.rule == "predictive":
        stat = final_majority(v1, v2, answered, max_n - drawn)
    else:
        stat = beta_tail(v1 + 1, v2 + 1)
    return stat >= spec.threshold, stat


def should_stop(spec: AdaptiveSpec, answers: Sequence[str | None], drawn: int, max_n: int) -> Decision:
    """Decide after a batch. `answers`: extracted answers in draw order (None = unextractable);
    `drawn`: candidates drawn so far (answers or not); `max_n`: the request's n."""
    met, stat = _met(spec, answers, drawn, max_n)
    post = None if stat is None else float(stat)
    if drawn >= max_n:
        return Decision(True, "max_n", post, spec.rule)
    if leaders(answers)[2] < min(spec.min, max_n):
        return Decision(False, "below_min", post, spec.rule)
    if met:
        return Decision(True, "agreement" if spec.rule == "window" else "confident", post, spec.rule)
    return Decision(False, "no_agreement" if spec.rule == "window" else "not_confident", post, spec.rule)


def stop_on_verified(spec: AdaptiveSpec, candidates: Sequence[Candidate], max_n: int) -> Decision:
    """Verified routes: stop at the first candidate that passed the hard checks; with
    `keep_sampling_verified`, apply the route's rule to the verified candidates' answers
    (the pool the vote will pick from). `candidates` need `.verified` and `.answer`."""
    drawn = len(candidates)
    verified = [c for c in candidates if c.verified]
    if verified and not spec.keep_sampling_verified:
        return Decision(True, "verified", None, spec.rule)
    return should_stop(spec, [c.answer for c in verified], drawn, max_n)


def draws_before_stop(spec: AdaptiveSpec, answers: Sequence[str | None], drawn: int, max_n: int) -> int:
    """The fewest further draws after which the rule could possibly stop (every new draw
    agreeing with the leader). Drawing these at once costs no more tokens than drawing
    one at a time would, and saves rounds of latency."""
    left = max_n - drawn
    floor = max(0, min(spec.min, max_n) - leaders(answers)[2])
    if spec.rule == "window":
        return min(left, max(floor, spec.window - _streak(answers)))
    counts = _counts(answers)
    leader = max(counts, key=lambda a: counts[a]) if counts else "\0leader"  # a placeholder before any answer
    for k in range(floor, left + 1):
        extra = [*answers, *([leader] * k)]
        if _met(spec, extra, drawn + k, max_n)[0]:
            return k
    return left


def next_batch(spec: AdaptiveSpec, answers: Sequence[str | None], drawn: int, max_n: int) -> int:
    """How many candidates to draw next: at least `batch`, at least what any stop needs,
    never more than what is left of max_n (0 = done)."""
    left = max(0, max_n - drawn)
    return min(left, max(spec.batch, draws_before_stop(spec, answers, drawn, max_n)))


def next_verified_batch(spec: AdaptiveSpec, candidates: Sequence[Candidate], max_n: int) -> int:
    """`next_batch` for verified routes: any draw may pass the checks, so `batch` (capped);
    with keep_sampling_verified, the rule's bound over the verified candidates' answers."""
    drawn = len(candidates)
    if not spec.keep_sampling_verified:
        return min(max(0, max_n - drawn), spec.batch)
    return next_batch(spec, [c.answer for c in candidates if c.verified], drawn, max_n)


# ---------------------------------------------------------------- evidence

def mean_completion_tokens(candidates: Sequence[Candidate]) -> float:
    """Mean completion tokens per drawn candidate (`.sample.completion_tokens`)."""
    if not candidates:
        return 0.0
    return sum(c.sample.completion_tokens for c in candidates) / len(candidates)


def stop_info(decision: Decision, drawn: int, max_n: int, mean_candidate_tokens: float) -> AdaptiveStop:
    """The `its.stop` evidence (`Selection.stop`); the proxy's report reads saved/tokens_saved_estimate."""
    saved = max(0, max_n - drawn)
    return AdaptiveStop(rule=decision.rule, reason=decision.reason, drawn=drawn, max=max_n,
                        posterior=None if decision.posterior is None else round(decision.posterior, 6),
                        saved=saved, tokens_saved_estimate=round(saved * mean_candidate_tokens))
