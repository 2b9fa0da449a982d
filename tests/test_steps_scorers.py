"""The step search's signal guard and its `judge` and `check` step scorers: the guard's statistic
(pure), then end to end through the proxy on the simulator's step-wise mode."""

from __future__ import annotations

import re

import openai
import pytest

import step_checks
from conftest import sim_models
from itsproxy.proxy.simulator.steps import chains
from itsproxy.strategies.search.guard import (
    GuardSpec,
    Sizes,
    concordance,
    fallback_chains,
    judge_signal,
    search_tokens,
    step_strata,
)

PROBLEMS = chains(77, 8, steps=4)
ANSWER = re.compile(r"answer is (-?\d+)")


def test_concordance_counts_pairs_whose_agreement_differs():
    assert concordance([0.9, 0.8, 0.2], [1, 1, 0]) == (1.0, 2)
    assert concordance([0.2, 0.8, 0.9], [1, 1, 0]) == (0.0, 2)
    assert concordance([0.5, 0.5], [1, 0]) == (0.5, 1)
    assert concordance([0.5, 0.4], [0, 0]) == (None, 0)


def test_the_guard_trusts_a_scorer_only_when_it_ranks_agreed_answers_higher():
    spec = GuardSpec(chains=8, alpha=0.05)
    answers = ["1", "1", "1", "1", "2", "3", "4", "5"]
    sure = judge_signal(spec, [0.9, 0.8, 0.95, 0.85, 0.3, 0.4, 0.2, 0.5], answers)
    assert sure.decision == "search" and sure.concordance == 1.0 and sure.p_value is not None and sure.p_value < 0.05
    flat = judge_signal(spec, [0.3, 0.8, 0.5, 0.9, 0.4, 0.6, 0.7, 0.2], answers)
    assert flat.decision == "sample" and "does not rank" in flat.reason
    few = judge_signal(spec, [0.9, 0.8, 0.1, 0.2, 0.3, 0.4], ["1", "1", "2", "3", "4", "5"])  # perfect, but 2 vs 4
    assert few.decision == "sample" and few.concordance == 1.0  # one in 15 by chance: not evidence at 5%
    assert judge_signal(spec, [0.5] * 6, ["1"] * 6).decision == "stop"
    assert judge_signal(spec, [0.9, 0.1, 0.5, 0.2, 0.3, 0.4], list("123456")).decision == "sample"
    assert judge_signal(spec, [None, 0.8, 0.9, 0.1, 0.2, 0.3], answers[:6]).decision == "sample"


def probe(steps: list[str], scores: list[float | None]) -> list[tuple[str, float | None]]:
    return list(zip(steps, scores))


def test_step_strata_compare_sibling_steps_of_the_probe_trie():
    chains = [probe(["a", "b", "x"], [0.9, 0.8, 0.7]),
              probe(["a", "b", "x"], [0.8, 0.7, 0.6]),
              probe(["a ", "c", "y"], [0.7, 0.2, 0.5]),  # whitespace and case do not split a step
              probe(["d", "e", "z"], [0.1, 0.6, None])]
    strata = step_strata(chains)
    # depth 0: a a a d -> agreement 2 2 2 0; depth 1 under "a": b b c -> 1 1 0; depth 2 under a/b: x x (no pair);
    # the lone chains' later steps have no siblings
    assert strata == [([0.9, 0.8, 0.7, 0.1], [2, 2, 2, 0]), ([0.8, 0.7, 0.2], [1, 1, 0])]
    assert step_strata([probe(["a"], [0.5]), probe(["a"], [0.4])]) == []


def test_the_step_level_guard_finds_signal_the_chain_level_test_cannot():
    spec = GuardSpec(chains=8, alpha=0.05)
    right, wrong = ["s1 ok", "s2 ok", "s3 ok", "answer is 1"], ["bad"]
    # every chain right but for one wrong step (at depths 0..3): the wrong step scores low, the chain's mean barely
    chains, answers = [], []
    for i in range(8):
        at = i % 4 if i >= 4 else None
        texts = [wrong[0] + str(i) if d == at else t for d, t in enumerate(right)]
        chains.append(probe(texts, [0.3 if d == at else 0.8 + 0.01 * i for d in range(4)]))
        answers.append("1" if at is None else str(i))
    means = [sum(s for _, s in c if s is not None) / 4 for c in chains]
    chain_level = judge_signal(spec, list(means), answers)
    step_level = judge_signal(spec, list(means), answers, chains)
    assert step_level.decision == "search" and step_level.level == "step" and step_level.pairs > chain_level.pairs
    # the same trie with scores that say nothing (a wrong step scores like its right siblings) is not trusted
    flat = [probe([t for t, _ in c], [0.8 - 0.01 * i] * 4) for i, c in enumerate(chains)]
    assert judge_signal(spec, [0.5] * 8, answers, flat).decision == "sample"
    # no step shared by two chains: the chain-level test decides
    lone = [probe([f"x{i}", f"y{i}"], [0.5, 0.5]) for i in range(6)]
    assert judge_signal(spec, [0.9, 0.1, 0.5, 0.2, 0.3, 0.4], list("123456"), lone).level == "chain"


def test_the_fallback_spends_about_what_the_search_would():
    sizes = Sizes(prompt=30, chain=50, steps=5)
    beam = search_tokens("beam", 1, 4, 8, 6, sizes)
    assert beam == pytest.approx(5 * 30 + 10 * (0 + 1 + 2 + 3 + 4) + 5 * 40)
    assert fallback_chains(beam, sizes, cap=64) == round((beam - 30) / 50)
    assert fallback_chains(10_000, sizes, cap=20) == 20
    assert search_tokens("beam", 2, 3, 8, 6, sizes) > beam
    assert search_tokens("beam", 1, 4, 8, 6, sizes, seeded=True) == pytest.approx(beam - (30 + 4 * 10))
    assert search_tokens("mcts", 2, 3, 8, 6, sizes) > 0


@pytest.fixture
def steppers(make_proxy, fresh_sim):
    variants = {"informative": "sim@step_signal=1@step_accuracy=0.7",
                "flat": "sim@step_signal=0@step_accuracy=0.7",
                "judge": "sim@judge_tpr=1@judge_fpr=0"}
    models = sim_models(fresh_sim.url, **variants)
    for m in models:
        if m["model_name"] in ("informative", "flat"):
            m["model_info"] = {"mode": "completion"}
    beam = {"method": "beam", "width": 2, "expansions": 3}
    checker = {"python": "step_checks:arithmetic"}
    routes = [
        {"name": "informative", "generate": {"model": "informative", "temperature": 0.8, "steps": beam}},
        {"name": "flat", "generate": {"model": "flat", "temperature": 0.8, "steps": beam}},
        {"name": "judged", "generate": {"model": "flat", "temperature": 0.8,
                                        "steps": beam | {"score": "judge", "judge": {"model": "judge"}}}},
        {"name": "checked", "generate": {"model": "flat", "temperature": 0.8,
                                         "steps": beam | {"score": "check", "check": checker}}},
        {"name": "broken", "generate": {"model": "flat", "temperature": 0.8,
                                        "steps": beam | {"score": "check", "check": {"python": "step_checks:crash"}}}},
    ]
    for r in routes:
        r["match"] = {"model": r["name"]}
    return make_proxy({"model_list": models, "routes": routes}, fresh_sim)


def ask(p, model: str, q: str, seed: int):
    before = p.sim_stats()["total_tokens"]
    r = p.client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}], seed=seed)
    assert r.usage.total_tokens == p.sim_stats()["total_tokens"] - before  # every call, probes included
    return r, r.model_extra["its"]


def test_the_guard_searches_where_confidence_informs_and_samples_where_it_does_not(steppers):
    decided: dict[str, list[str]] = {"informative": [], "flat": []}
    for route in decided:
        for seed, (q, _) in enumerate(PROBLEMS):
            r, its = ask(steppers, route, q, seed)
            guard = its["search_steps"]["guard"]
            assert set(its["usage"]["by_phase"]) == {"search"} and guard["probes"] == 8
            decided[route].append(guard["decision"])
            if guard["decision"] == "sample":
                assert guard["samples"] > 0 and its["search_steps"]["chains"] == 8 + guard["samples"]
                assert its["search_steps"]["calls"] == 2  # the probe, then one call of independent samples
            if guard["decision"] == "search":
                assert its["search_steps"]["depth"] >= 4 and guard["p_value"] <= 0.05
    assert decided["informative"].count("search") > decided["flat"].count("search")
    assert decided["flat"].count("search") <= 1


def test_a_judge_scores_partial_chains_under_phase_search(steppers):
    right = 0
    for seed, (q, truth) in enumerate(PROBLEMS[:4]):
        r, its = ask(steppers, "judged", q, seed)
        ev = its["search_steps"]
        assert set(its["usage"]["by_phase"]) == {"search"} and ev["score"] == "judge" and "guard" not in ev
        assert ev["best_scores"] and all(0 <= s <= 1 for s in ev["best_scores"]) and "errors" not in ev
        found = ANSWER.findall(r.choices[0].message.content)
        right += bool(found) and int(found[-1]) == truth
    assert right == 4  # a judge that knows right from wrong steers a flat-confidence search to the truth


def test_a_checker_prunes_partial_chains_it_rejects_and_sees_the_partial_flag(steppers):
    step_checks.SEEN.clear()
    for seed, (q, truth) in enumerate(PROBLEMS[:3]):
        r, its = ask(steppers, "checked", q, seed)
        ev = its["search_steps"]
        assert ev["score"] == "check" and ev["pruned"] > 0
        found = ANSWER.findall(r.choices[0].message.content)
        assert found and int(found[-1]) == truth
    assert True in step_checks.SEEN and False in step_checks.SEEN


def test_a_crashing_checker_rejects_rather_than_passes(steppers):
    with pytest.raises(openai.APIStatusError) as err:  # every branch pruned: no candidate, never a pass
        steppers.client.chat.completions.create(model="broken", messages=[{"role": "user", "content": PROBLEMS[0][0]}])
    assert err.value.status_code == 502
