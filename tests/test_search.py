"""Search over augmenting strings: allocation math, learning through the proxy, persistence, concurrency."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from itsproxy.proxy.config import ConfigError, parse_config
from itsproxy.proxy.simulator import SimConfig
from itsproxy.proxy.simulator import serve_in_thread as serve_simulator
from itsproxy.proxy.storage.search_store import SearchStore
from itsproxy.proxy.telemetry import metrics
from itsproxy.strategies.search.strings import ArmStats, allocate, request_rng, rewards_for
from itsproxy.strategies.types import Candidate, Sample, Selection, Verdict
from tests.conftest import sim_models

REPO = Path(__file__).resolve().parents[1]
STRINGS = ["Answer directly.", "Think step by step.", "Double-check the arithmetic."]
BAD, GOOD = 0, 1


def stats(*rows: tuple[int, float]) -> list[ArmStats]:
    return [ArmStats(i, f"s{i}", pulls, reward) for i, (pulls, reward) in enumerate(rows)]


def search_route(name: str, policy: str = "ucb", **search) -> dict:
    return {"name": name, "match": {"model": name},
            "generate": {"model": "sim", "n": 8, "temperature": 0.8, "augment": list(STRINGS),
                         "augment_search": {"policy": policy, "explore": 1.0, "min_share": 0.1, **search}},
            "select": [{"vote": {"extract": "number"}}]}


def ask(proxy, model: str, seed: int) -> dict:
    rng = random.Random(seed)
    question = f"What is {rng.randint(100, 999)} + {rng.randint(100, 999)}?"
    resp = proxy.client.chat.completions.create(model=model, seed=seed,
                                                messages=[{"role": "user", "content": question}])
    return resp.model_extra["its"]["search"]


def stored(path: Path, route: str) -> dict[int, tuple[int, float]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT arm, pulls, reward FROM augment_arms WHERE route = ?", (route,)).fetchall()
    return {arm: (pulls, reward) for arm, pulls, reward in rows}


def metric_total(name: str, route: str) -> float:
    body, _ = metrics.render(None)
    return sum(s.value for fam in text_string_to_metric_families(body.decode()) for s in fam.samples
               if s.name == name and s.labels.get("route") == route)


@pytest.fixture
def boosted_sim():
    handle = serve_simulator(SimConfig(seed=3, boosts={"Think step by step.": 0.4, "Answer directly.": -0.3}))
    yield handle
    handle.stop()


# ---------------------------------------------------------------- pure policy logic


def test_ucb_tries_unpulled_arms_first_then_favours_the_best():
    assert allocate("ucb", stats((5, 4), (5, 4), (0, 0)), 1, random.Random(0)) == [0, 0, 1]
    assert allocate("ucb", stats((0, 0), (0, 0), (0, 0)), 3, random.Random(0)) == [1, 1, 1]
    alloc = allocate("ucb", stats((40, 36), (40, 20), (40, 4)), 8, random.Random(0), explore=0.5)
    assert sum(alloc) == 8 and alloc[0] > alloc[1] >= alloc[2]
    # No exploration bonus: pure exploitation of the best mean.
    assert allocate("ucb", stats((40, 36), (40, 20), (40, 4)), 8, random.Random(0), explore=0.0) == [8, 0, 0]


def test_thompson_is_deterministic_given_a_seed_and_favours_the_best():
    s = stats((12, 8), (12, 6), (12, 3))
    runs = [allocate("thompson", s, 8, random.Random(42)) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    totals = [0, 0, 0]
    for seed in range(200):
        for i, c in enumerate(allocate("thompson", s, 8, random.Random(seed))):
            totals[i] += c
    assert totals[0] > totals[1] > totals[2] > 0  # favours the best, keeps sampling the others


@pytest.mark.parametrize("policy", ["ucb", "thompson"])
def test_min_share_floor_and_counts_sum_to_n(policy):
    s = stats((500, 499), (500, 1), (500, 0))  # arm 0 is overwhelmingly better
    share = [0, 0, 0]
    for seed in range(300):
        rng = random.Random(seed)
        n = rng.randint(1, 16)
        for k_stats in (s, s[:2]):
            alloc = allocate(policy, k_stats, n, rng, explore=1.0, min_share=0.0)
            assert sum(alloc) == n and len(alloc) == len(k_stats) and min(alloc) >= 0
        alloc = allocate(policy, s, 9, random.Random(seed), min_share=1 / 3)
        assert alloc == [3, 3, 3]  # the floor is the whole batch at min_share = 1/k
        alloc = allocate(policy, s, 10, random.Random(seed), min_share=0.15)
        assert sum(alloc) == 10 and min(alloc) >= 1  # floor 1.5: one sample, two half the time
        share = [a + b for a, b in zip(share, alloc)]
    assert share[1] / 3000 == pytest.approx(0.15, abs=0.03)  # the floor's expected share, no more


def test_rewards_verified_else_agreement_with_winner():
    def cand(i, aug, answer, verdict=None):
        c = Candidate(i, Sample({"role": "assistant", "content": str(answer)}, "stop", "sim", i),
                      augment_index=aug, answer=answer)
        if verdict is not None:
            c.verdicts.append(Verdict("check", verdict))
        return c

    voted = [cand(0, 0, "5"), cand(1, 0, "6"), cand(2, 1, "5"), cand(3, 1, None), cand(4, None, "5")]
    assert rewards_for(Selection(voted[0], voted, "vote"), voted) == {0: (2, 1.0), 1: (2, 1.0)}
    checked = [cand(0, 0, "5", True), cand(1, 1, "5", False), cand(2, 1, "7", True)]
    assert rewards_for(Selection(checked[0], checked, "check", verified=True), checked) == {0: (1, 1.0),
                                                                                          1: (2, 1.0)}


@pytest.mark.parametrize("search, key", [
    ({"policy": "greedy"}, "augment_search.policy"),
    ({"explore": -1}, "augment_search.explore"),
    ({"min_share": 0.5}, "augment_search.min_share"),
    ({"prior": [1]}, "augment_search.prior"),
    ({"budget": 3}, "augment_search.budget"),
])
def test_bad_search_config_names_the_key(sim, search, key):
    cfg = {"model_list": sim_models(sim.url), "routes": [search_route("bad", **search)]}
    with pytest.raises(ConfigError, match=rf"routes\[0\]\.generate\.{key.replace('.', r'.')}"):
        parse_config(cfg)
    cfg["routes"][0]["generate"]["augment"] = ["only one"]
    cfg["routes"][0]["generate"]["augment_search"] = {}
    with pytest.raises(ConfigError, match=r"generate\.augment\b"):
        parse_config(cfg)


# ---------------------------------------------------------------- through the proxy


@pytest.mark.parametrize("policy", ["ucb", "thompson"])
def test_search_moves_samples_to_the_better_string(make_proxy, boosted_sim, tmp_path, policy):
    route = f"aug-{policy}"  # fixed: the allocation RNG is seeded from the route name (state is per test: tmp_path)
    proxy = make_proxy({"routes": [search_route(route, policy)], "server": {"state_dir": str(tmp_path)}},
                       boosted_sim)
    allocs = [ask(proxy, route, seed)["allocation"] for seed in range(40)]
    assert all(sum(a) == 8 for a in allocs)
    if policy == "ucb":
        assert allocs[0] == [3, 3, 2]  # nothing learned yet: round robin

    def share(rows, arm):
        return sum(a[arm] for a in rows) / (8 * len(rows))

    start, late = allocs[:1], allocs[-10:]
    assert share(late, GOOD) >= 0.6 and share(late, GOOD) > share(start, GOOD) + 0.25
    assert share(late, GOOD) > 3 * share(late, BAD)
    assert all(a[BAD] >= 0 for a in late) and sum(a[BAD] for a in late) > 0  # min_share keeps exploring
    last = ask(proxy, route, 40)["arms"]
    assert sum(a["pulls"] for a in last) == 40 * 8
    assert last[GOOD]["mean_reward"] > last[BAD]["mean_reward"]
    assert (tmp_path / "search.sqlite3").exists()
    assert metric_total("its_augment_pulls_total", route) == 41 * 8


def test_state_survives_a_restart_and_stale_strings_are_ignored(make_proxy, boosted_sim, tmp_path):
    route = f"aug-restart-{uuid.uuid4().hex[:6]}"
    db = tmp_path / "state" / "learned.sqlite3"
    config = {"routes": [search_route(route, path=str(db))]}
    first = make_proxy(config, boosted_sim)
    for seed in range(15):
        ask(first, route, seed)
    first.stop()
    learned = stored(db, route)
    assert sum(p for p, _ in learned.values()) == 15 * 8

    second = make_proxy(config, boosted_sim)
    info = ask(second, route, 1000)
    assert [(a["pulls"], a["mean_reward"]) for a in info["arms"]] == [
        (learned[i][0], round(learned[i][1] / learned[i][0], 4)) for i in range(3)]
    expected = allocate("ucb", [ArmStats(i, t, *learned[i]) for i, t in enumerate(STRINGS)], 8,
                        request_rng(route, 1000), 1.0, 0.1)
    assert info["allocation"] == expected and expected[GOOD] > expected[BAD]

    # Editing a string in config starts that arm afresh; the others keep what they learned.
    before = stored(db, route)
    edited = {"routes": [search_route(route, path=str(db))]}
    edited["routes"][0]["generate"]["augment"][2] = "Check the carries."
    arms = ask(make_proxy(edited, boosted_sim), route, 1001)["arms"]
    assert [a["pulls"] for a in arms] == [before[0][0], before[1][0], 0]


def test_concurrent_requests_from_two_proxies_lose_no_update(make_proxy, sim, tmp_path):
    route = f"aug-conc-{uuid.uuid4().hex[:6]}"
    config = {"routes": [search_route(route, "thompson")], "server": {"state_dir": str(tmp_path)}}
    proxies = [make_proxy(config, sim), make_proxy(config, sim)]  # two "workers", one file
    with ThreadPoolExecutor(16) as pool:
        infos = list(pool.map(lambda s: ask(proxies[s % 2], route, s), range(48)))
    planned = [sum(info["allocation"][i] for info in infos) for i in range(3)]
    rows = stored(tmp_path / "search.sqlite3", route)
    assert [rows[i][0] for i in range(3)] == planned and sum(planned) == 48 * 8
    assert metric_total("its_augment_pulls_total", route) == 48 * 8
    assert metric_total("its_augment_reward_total", route) == pytest.approx(sum(r for _, r in rows.values()))


WORKER = textwrap.dedent("""
    import asyncio, sys
    from prometheus_client import values
    from itsproxy.proxy.storage.search_store import SearchStore
    assert values.ValueClass is not values.MutexValue, "not in multi-process mode"
    path, route, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    arms = ["a", "b"]

    async def main():
        store = SearchStore(path)
        await asyncio.gather(*(store.record(route, arms, {0: (1, 1.0), 1: (2, 0.5)}) for _ in range(reps)))
        await store.aclose()

    asyncio.run(main())
""")


def test_worker_processes_share_the_file_and_the_metrics(tmp_path, monkeypatch):
    route = f"aug-mp-{uuid.uuid4().hex[:6]}"
    db, mp = tmp_path / "shared.sqlite3", tmp_path / "metrics"
    mp.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(db), route, "50"], env=env, cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    assert stored(db, route) == {0: (150, 150.0), 1: (300, 75.0)}
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(mp))
    assert metric_total("its_augment_pulls_total", route) == 450
    assert metric_total("its_augment_reward_total", route) == 225


@pytest.mark.asyncio
async def test_store_ignores_unknown_arms_and_reopens(tmp_path):
    store = SearchStore(tmp_path / "s.sqlite3")
    await store.record("r", ["x", "y"], {0: (3, 2.0), 5: (1, 1.0)})
    await store.aclose()
    again = SearchStore(tmp_path / "s.sqlite3")
    assert [(s.pulls, s.reward) for s in await again.load("r", ["x", "y"])] == [(3, 2.0), (0, 0.0)]
    assert [(s.pulls, s.reward) for s in await again.load("r", ["x-edited", "y"])] == [(0, 0.0), (0, 0.0)]
    again.close()
