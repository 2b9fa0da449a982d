"""Adaptive stopping rules (strategies/adaptive.py): exact posteriors, boundaries, batches."""

from __future__ import annotations

import itertools
import random
from fractions import Fraction
from math import comb, factorial
from types import SimpleNamespace

import pytest

from itsproxy.strategies.adaptive.rules import (
    AdaptiveSpec,
    Decision,
    beta_tail,
    draws_before_stop,
    final_majority,
    leaders,
    mean_completion_tokens,
    next_batch,
    next_verified_batch,
    parse_adaptive,
    posterior,
    should_stop,
    stop_info,
    stop_on_verified,
)
from itsproxy.strategies.types import SpecError


def spec(**kw) -> AdaptiveSpec:
    return parse_adaptive({"batch": 1, "min": 1, **kw}, "routes[0].generate.adaptive")


# ---------------------------------------------------------------- Beta posterior

@pytest.mark.parametrize("a,b,expected", [(2, 1, "3/4"), (4, 1, "15/16"), (3, 2, "11/16"), (6, 1, "63/64"),
                                          (1, 1, "1/2"), (1, 2, "1/4"), (2, 2, "1/2")])
def test_beta_tail_hand_computed(a, b, expected):
    assert beta_tail(a, b) == Fraction(expected)


def test_posterior_is_beta_of_votes_plus_one():
    assert posterior(1, 0) == 0.75
    assert posterior(3, 0) == 0.9375
    assert posterior(2, 1) == 0.6875
    assert posterior(5, 0) == 0.984375
    assert posterior(4, 4) == 0.5


def test_beta_tail_matches_numeric_integration():
    # Independent check: integrate the Beta density over (1/2, 1) with Simpson's rule.
    def density_integral(a: int, b: int, steps: int = 2000) -> float:
        norm = factorial(a + b - 1) / (factorial(a - 1) * factorial(b - 1))
        h = 0.5 / steps
        f = [norm * (0.5 + i * h) ** (a - 1) * (0.5 - i * h) ** (b - 1) for i in range(steps + 1)]
        return h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    for a, b in itertools.product(range(1, 10), repeat=2):
        assert abs(float(beta_tail(a, b)) - density_integral(a, b)) < 1e-9, (a, b)


def test_beta_stops_exactly_at_the_boundary():
    at = spec(rule="beta", confidence=0.9375)  # posterior(3, 0) is exactly 15/16
    assert should_stop(at, ["x"] * 3, 3, 10) == Decision(True, "confident", 0.9375, "beta")
    assert not should_stop(at, ["x"] * 2, 2, 10).stop
    above = spec(rule="beta", confidence=0.96875)  # posterior(4, 0) is exactly 31/32
    assert should_stop(above, ["x"] * 4, 4, 10).stop
    assert should_stop(above, ["x"] * 3, 3, 10) == Decision(False, "not_confident", 0.9375, "beta")


def test_confidence_is_read_as_written_decimal():
    assert spec(confidence=0.95).threshold == Fraction(19, 20)
    assert spec(confidence=0.9375).threshold == Fraction(15, 16)


def test_beta_uses_two_leaders_and_ignores_unanswered():
    assert leaders(["a", "b", "a", None, "c", "a", "b"]) == (3, 2, 6)
    assert leaders([None, None]) == (0, 0, 0)
    s = spec(rule="beta", confidence=0.95)
    d = should_stop(s, ["a", "a", "a", "a", "b", None, "c"], 7, 20)  # (4, 1): P = 57/64 < 0.95
    assert d.posterior == float(beta_tail(5, 2)) and not d.stop


# ---------------------------------------------------------------- window rule

def test_window_rule():
    s = spec(rule="window", window=3)
    assert should_stop(s, ["b", "a", "a", "a"], 4, 10) == Decision(True, "agreement", None, "window")
    assert not should_stop(s, ["a", "a", "b", "a"], 4, 10).stop
    assert should_stop(s, ["a", "a", None, "a"], 4, 10).stop  # None neither breaks nor extends
    assert not should_stop(s, ["a", None, None, "a"], 4, 10).stop
    assert not should_stop(spec(rule="window", window=4), ["b", "a", "a", "a"], 4, 10).stop


# ---------------------------------------------------------------- min / max

def test_min_counts_candidates_with_answers():
    s = spec(rule="window", window=2, min=3)
    assert should_stop(s, ["a", "a"], 2, 10).reason == "below_min"
    assert should_stop(s, ["a", None, "a"], 3, 10).reason == "below_min"
    assert should_stop(s, ["a", None, "a", "a"], 4, 10).stop


def test_max_n_always_stops():
    s = spec(rule="beta", confidence=0.99, min=5)
    d = should_stop(s, ["a", "b", None], 3, 3)
    assert d.stop and d.reason == "max_n" and d.posterior == 0.5
    # min above the request's n: capped by it
    assert should_stop(spec(rule="window", window=2, min=8), ["a", "a"], 2, 4).stop is False
    assert next_batch(spec(min=8), [], 0, 4) == 4


# ---------------------------------------------------------------- batch sizes

def test_next_batch_sizes():
    beta95 = parse_adaptive({"rule": "beta", "confidence": 0.95, "min": 2, "batch": 2}, "p")
    assert next_batch(beta95, [], 0, 8) == 4  # posterior(3,0)=0.9375 < 0.95 <= posterior(4,0)
    assert next_batch(beta95, ["a"] * 4 + ["b"], 5, 8) == 2  # posterior(6,1) = 247/256 is the first >= 0.95
    assert next_batch(beta95, ["a", "b", "a", "b", "a"], 5, 8) == 3  # (8,2) would need 5: capped by what is left
    assert next_batch(beta95, ["a"] * 8, 8, 8) == 0
    assert next_batch(parse_adaptive({"rule": "beta", "batch": 6}, "p"), [], 0, 8) == 6
    assert next_batch(parse_adaptive({"rule": "beta", "batch": 6}, "p"), ["a"] * 5, 5, 8) == 3
    window = parse_adaptive({"rule": "window", "window": 4, "batch": 2}, "p")
    assert next_batch(window, ["a", "b"], 2, 10) == 3  # streak 1: three more could complete the window
    assert next_batch(window, ["a", "b", "b", "b"], 4, 10) == 2  # at least `batch`


def _sequential_stop(s: AdaptiveSpec, seq: list, max_n: int) -> int:
    for t in range(1, max_n + 1):
        if should_stop(s, seq[:t], t, max_n).stop:
            return t
    return max_n


def _adaptive_stop(s: AdaptiveSpec, seq: list, max_n: int) -> int:
    drawn = 0
    while True:
        k = next_batch(s, seq[:drawn], drawn, max_n)
        assert k >= 1
        drawn += k
        if should_stop(s, seq[:drawn], drawn, max_n).stop:
            return drawn


def test_batches_never_overshoot_one_at_a_time():
    # Jumping by draws_before_stop is free: with batch=1 the stop point equals drawing
    # one candidate at a time. (With batch=b > 1 there is no such bound: the rules are
    # checked only between batches, and a transient stop inside a batch can be missed.)
    rng = random.Random(5)
    for _ in range(1500):
        max_n = rng.randint(1, 14)
        weights = [rng.random() for _ in range(4)]
        seq = rng.choices(["a", "b", "c", None], weights, k=max_n)
        raw = {"rule": rng.choice(["beta", "window", "predictive"]), "window": rng.randint(2, 4),
               "confidence": rng.choice([0.6, 0.8, 0.9, 0.9375, 0.95, 0.99]), "min": rng.randint(1, 4)}
        one = parse_adaptive({**raw, "batch": 1}, "p")
        seq_stop = _sequential_stop(one, seq, max_n)
        assert _adaptive_stop(one, seq, max_n) == seq_stop, (raw, seq)


def test_draws_before_stop_lower_bound_examples():
    assert draws_before_stop(spec(rule="beta", confidence=0.95), [], 0, 100) == 4
    assert draws_before_stop(spec(rule="beta", confidence=0.99), ["a", "b"], 2, 100) == 8  # (8,1): 1013/1024 < 0.99 <= (9,1): 2036/2048
    assert draws_before_stop(spec(rule="window", window=4), ["a", "a"], 2, 3) == 1  # capped by max


# ---------------------------------------------------------------- predictive (final majority) rule

def _polya(v1: int, v2: int, answered: int, m: int) -> Fraction:
    """Brute force: enumerate every sequence of m draws from a Polya urn (leader vs others)."""
    total = Fraction(0)
    for seq in itertools.product((0, 1), repeat=m):
        a, b, p = v1 + 1, answered - v1 + 1, Fraction(1)
        for lead in seq:
            p *= Fraction(a if lead else b, a + b)
            a, b = a + lead, b + (1 - lead)
        L = sum(seq)
        if v1 + L > v2 + (m - L):
            total += p
    return total


def test_final_majority_hand_computed():
    assert final_majority(4, 0, 4, 4) == Fraction(125, 126)
    assert final_majority(3, 0, 3, 5) == Fraction(121, 126)
    assert final_majority(5, 2, 7, 1) == 1  # cannot be caught
    assert final_majority(2, 2, 4, 0) == 1  # nothing left to draw


def test_final_majority_matches_polya_urn_enumeration():
    for v1, v2, extra, m in itertools.product(range(0, 5), range(0, 4), range(0, 3), range(1, 8)):
        if v2 > v1:
            continue
        answered = v1 + v2 + extra
        assert final_majority(v1, v2, answered, m) == _polya(v1, v2, answered, m), (v1, v2, answered, m)


def test_predictive_rule_uses_the_remaining_budget():
    s = spec(rule="predictive", confidence=0.95)
    assert should_stop(s, ["a"] * 3, 3, 8).stop  # 121/126 >= 0.95
    assert not should_stop(s, ["a"] * 3, 3, 40).stop  # far more draws left: less sure
    # (5, 2) after 7 of 8: the leader cannot be overtaken, the bare Beta rule keeps drawing.
    seq = ["a", "b", "a", "a", "b", "a", "a"]
    assert should_stop(s, seq, 7, 8) == Decision(True, "confident", 1.0, "predictive")
    assert not should_stop(spec(rule="beta", confidence=0.95), seq, 7, 8).stop


def test_predictive_is_never_looser_than_leader_cannot_be_caught():
    s = spec(rule="predictive", confidence=0.999)
    for v1, v2, m in itertools.product(range(8), range(8), range(8)):
        if v2 <= v1 and v1 - v2 > m:
            assert should_stop(s, ["a"] * v1 + ["b"] * v2, v1 + v2, v1 + v2 + m).stop


# ---------------------------------------------------------------- verified routes, evidence, config

def _cand(answer, verified, tokens=10):
    return SimpleNamespace(answer=answer, verified=verified, sample=SimpleNamespace(completion_tokens=tokens))


def test_stop_on_verified():
    s = spec(rule="beta", confidence=0.95)
    assert stop_on_verified(s, [_cand("1", False), _cand("2", True)], 8) == Decision(True, "verified", None, "beta")
    assert not stop_on_verified(s, [_cand("1", False), _cand("2", False)], 8).stop
    keep = spec(rule="window", window=2, keep_sampling_verified=True)
    assert not stop_on_verified(keep, [_cand("2", True), _cand("2", False)], 8).stop  # only verified vote
    assert stop_on_verified(keep, [_cand("2", True), _cand("3", False), _cand("2", True)], 8).stop


def test_next_verified_batch():
    s = parse_adaptive({"rule": "beta", "confidence": 0.95, "batch": 2}, "p")
    assert next_verified_batch(s, [], 8) == 2
    assert next_verified_batch(s, [_cand("1", False)] * 7, 8) == 1
    keep = parse_adaptive({"rule": "beta", "confidence": 0.95, "batch": 2, "keep_sampling_verified": True}, "p")
    assert next_verified_batch(keep, [_cand("1", True), _cand("2", False)], 8) == 3  # to (4, 0) among verified


def test_stop_info_shape():
    cands = [_cand("1", False, 10), _cand("1", False, 13)]
    assert mean_completion_tokens(cands) == 11.5
    d = should_stop(spec(rule="beta", confidence=0.9375), ["1"] * 3, 3, 9)
    assert stop_info(d, 3, 9, 11.5).as_dict() == {"rule": "beta", "reason": "confident", "drawn": 3, "max": 9,
                                        "posterior": 0.9375, "saved": 6, "tokens_saved_estimate": 69}
    assert mean_completion_tokens([]) == 0.0


def test_parse_adaptive():
    assert parse_adaptive(None, "p") is None
    assert parse_adaptive({"rule": "off"}, "p") is None
    assert parse_adaptive("window", "p") == AdaptiveSpec(rule="window")
    assert parse_adaptive({}, "p") == AdaptiveSpec()
    bad = [({"rule": "vote"}, "p.rule"), ({"confidence": 0.5}, "p.confidence"), ({"confidence": 1}, "p.confidence"),
           ({"confidence": True}, "p.confidence"), ({"window": 1}, "p.window"), ({"min": 0}, "p.min"),
           ({"batch": 0}, "p.batch"), ({"batch": 1.5}, "p.batch"), ({"keep_sampling_verified": "yes"},
           "p.keep_sampling_verified"), ({"windw": 3}, "p.windw"), ([1], "p")]
    for raw, path in bad:
        with pytest.raises(SpecError) as exc:
            parse_adaptive(raw, "p")
        assert exc.value.path == path, raw


def test_binomial_identity_used_by_beta_tail():
    # P(Beta(a,b) > 1/2) = P(Binomial(a+b-1, 1/2) <= a-1), and by symmetry = P(Bin >= b).
    for a, b in itertools.product(range(1, 8), repeat=2):
        n = a + b - 1
        assert beta_tail(a, b) == Fraction(sum(comb(n, k) for k in range(b, n + 1)), 2 ** n)
        assert beta_tail(a, b) + beta_tail(b, a) == 1
