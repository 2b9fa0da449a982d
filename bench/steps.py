"""Search over reasoning steps vs plain voting, on the simulator's step-wise mode, through the proxy.

    python -m bench.steps            # 100 chain problems, step_signal 1 and 0, step_accuracy 0.8 and 0.6
    python -m bench.steps --step-accuracy 0.6 --only "vote n=16" --only "k=4, confidence, guard" --problem-seed 2027
    python -m bench.steps --real http://127.0.0.1:8080/v1   # llama.cpp: see bench/steps_real.py

Each problem is a 4-operation chain ("Start at 7, add 5, ..."); each step is right with
probability `step_accuracy` and errors propagate. Two regimes: 0.8 (a chain is right 41% of the
time; voting saturates near 100% at ~1000 tokens) and 0.6 (13%; voting does not). With
step_signal=1 a step's logprobs tell right from wrong; with 0 they say nothing. The PRM rows
score prefixes with the simulator's /reward (a process reward on chain problems, independent of
step_signal). Every route uses the same completion-mode model entry, the same problems and the
same client seed per problem. Columns: accuracy (the returned answer equals the chain's result)
and tokens/question (the responses' `usage`, i.e. everything the simulator served, search calls
included).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from itsproxy.proxy.upstream.litellm_loader import OFFLINE_ENV

for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)

import openai  # noqa: E402

from bench import steps_real  # noqa: E402
from itsproxy.proxy.config import parse_config  # noqa: E402
from itsproxy.proxy.http.app import create_app  # noqa: E402
from itsproxy.proxy.serving import embedded_config, serve_in_thread  # noqa: E402
from itsproxy.proxy.simulator import SimConfig  # noqa: E402
from itsproxy.proxy.simulator import serve_in_thread as serve_simulator  # noqa: E402
from itsproxy.proxy.simulator.steps import chains  # noqa: E402

PROBLEMS = 100
STEP_ACCURACIES = (0.8, 0.6)
VOTE = [{"vote": {"extract": "number"}}]
BEAM1 = {"method": "beam", "width": 1, "expansions": 4}
BEAM2 = {"method": "beam", "width": 2, "expansions": 3}
MCTS = {"method": "mcts", "rollouts": 6, "expansions": 3}
OFF = {"guard": "off"}
PRM = {"score": "reward", "reward": {"url": "{sim}/reward"}}
CONFIGS: dict[str, dict[str, Any]] = {  # grouped by roughly equal token spend
    "vote n=8": {"generate": {"n": 8}, "select": VOTE},
    "beam w=1 k=4, confidence, no guard": {"generate": {"steps": BEAM1 | OFF}},
    "beam w=1 k=4, PRM": {"generate": {"steps": BEAM1 | PRM}},
    "vote n=12": {"generate": {"n": 12}, "select": VOTE},
    "beam w=2 k=3, confidence, no guard, vote": {"generate": {"steps": BEAM2 | OFF}, "select": VOTE},
    "beam w=2 k=3, PRM": {"generate": {"steps": BEAM2 | PRM}},
    "mcts 6 rollouts k=3, confidence, no guard": {"generate": {"steps": MCTS | OFF}},
    "mcts 6 rollouts k=3, PRM": {"generate": {"steps": MCTS | PRM}},
    "vote n=16": {"generate": {"n": 16}, "select": VOTE},
    "beam w=1 k=4, confidence, guard": {"generate": {"steps": BEAM1}},
    "vote n=20": {"generate": {"n": 20}, "select": VOTE},
    "beam w=2 k=3, confidence, guard, vote": {"generate": {"steps": BEAM2}, "select": VOTE},
    "mcts 6 rollouts k=3, confidence, guard": {"generate": {"steps": MCTS}},
}
ANSWER = re.compile(r"answer is (-?\d+)")


def routes(sim_url: str) -> list[dict[str, Any]]:
    out = []
    for i, cfg in enumerate(CONFIGS.values()):
        gen = json.loads(json.dumps({"model": "stepper", "temperature": 0.8, **cfg["generate"]})
                         .replace("{sim}", sim_url))
        out.append({"name": f"r{i}", "match": {"model": f"r{i}"}, "generate": gen, "select": cfg.get("select", []),
                    "limits": {"max_n": 32, "timeout_s": 60}})
    return out


def ask(client: openai.OpenAI, model: str, q: str, truth: int, seed: int) -> tuple[bool, int, str]:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}], seed=seed)
    found = ANSWER.findall(r.choices[0].message.content or "")
    guard = ((r.model_extra or {}).get("its", {}).get("search_steps") or {}).get("guard") or {}
    return bool(found) and int(found[-1]) == truth, r.usage.total_tokens if r.usage else 0, guard.get("decision", "")


def ci95(acc: float, n: int) -> float:
    """The half-width of a normal-approximation 95% interval for an accuracy over n questions."""
    return 1.96 * math.sqrt(max(acc * (1 - acc), 1 / n) / n)


def run_signal(signal: float, accuracy: float, problems: list[tuple[str, int]],
               labels: list[str]) -> list[tuple[str, float, float, str]]:
    rows = []
    with serve_simulator(SimConfig(seed=14)) as sim:
        model = {"model_name": "stepper", "model_info": {"mode": "completion"},
                 "litellm_params": {"model": f"openai/sim@step_signal={signal}@step_accuracy={accuracy}",
                                    "api_base": f"{sim.url}/v1", "api_key": "none"}}
        config = parse_config({"model_list": [model], "routes": routes(sim.url),
                               "server": {"max_upstream_concurrency": 256}})
        handle = serve_in_thread(embedded_config(create_app(config)))
        client = openai.OpenAI(base_url=handle.base_url, api_key="none", max_retries=0, timeout=120)
        try:
            with ThreadPoolExecutor(4) as pool:
                for i, label in enumerate(CONFIGS):
                    if label not in labels:
                        continue
                    route = f"r{i}"
                    res = list(pool.map(lambda p, r=route: ask(client, r, p[1][0], p[1][1], p[0]),
                                        enumerate(problems)))
                    acc = sum(ok for ok, _, _ in res) / len(res)
                    tok = sum(t for _, t, _ in res) / len(res)
                    decided = Counter(d for _, _, d in res if d)
                    guard = " ".join(f"{k} {v}" for k, v in sorted(decided.items()))
                    rows.append((label, acc, tok, guard))
                    print(f"  p {accuracy:g} signal {signal:g}  {label:44s} acc {acc:6.1%}  tokens/q {tok:6.0f}  "
                          f"{guard}", file=sys.stderr)
        finally:
            client.close()
            handle.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.steps", description=__doc__.split("\n")[0])
    parser.add_argument("--real", metavar="BASE_URL", help="a llama.cpp server's /v1 (bench/steps_real.py)")
    parser.add_argument("--problems", type=int, default=20, help="with --real: how many problems")
    parser.add_argument("--step-accuracy", type=float, action="append", help="a regime (repeatable; default 0.8, 0.6)")
    parser.add_argument("--only", action="append", help="the routes whose label contains this (repeatable)")
    parser.add_argument("--problem-seed", type=int, default=2026, help="which problems (default 2026)")
    args = parser.parse_args()
    if args.real:
        steps_real.main(args.real, args.problems, (args.only or [""])[0])
        return
    labels = [label for label in CONFIGS if any(part in label for part in args.only or [""])]
    for accuracy in args.step_accuracy or STEP_ACCURACIES:
        regime(accuracy, labels, args.problem_seed)


def regime(accuracy: float, labels: list[str], seed: int) -> None:
    problems = chains(seed, PROBLEMS, steps=4)
    table = {s: run_signal(s, accuracy, problems, labels) for s in (1.0, 0.0)}
    print(f"\n{PROBLEMS} chain problems (seed {seed}, 4 steps, step_accuracy {accuracy:g}), simulator seed 14\n")
    print("| route | acc (signal 1) | tokens/q | guard (signal 1) | acc (signal 0) | tokens/q | guard (signal 0) |")
    print("|---|---|---|---|---|---|---|")
    for (label, a1, t1, g1), (_, a0, t0, g0) in zip(table[1.0], table[0.0]):
        print(f"| {label} | {a1:.0%} ± {ci95(a1, PROBLEMS):.0%} | {t1:.0f} | {g1} "
              f"| {a0:.0%} ± {ci95(a0, PROBLEMS):.0%} | {t0:.0f} | {g0} |")


if __name__ == "__main__":
    main()
