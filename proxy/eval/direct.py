"""The baseline without the proxy: a completion-prompt dataset sent straight to a model server.

    python -m itsproxy.proxy.eval.direct --base-url http://127.0.0.1:8000/v1 --dataset capitals --k 8 --seed 0

Per row: one greedy completion (temperature 0) and k samples at --temperature, one call each
(llama.cpp's server ignores `n`), seeds seed*100003 + row index * k + j. Reports: one sample
(the first), greedy, majority vote of k (ties broken by first appearance), coverage@k (at least
one of k right: the ceiling a sound checker can reach). These are the figures the proxy's
routes should reproduce and beat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter

import openai
from tqdm import tqdm

from itsproxy.proxy.eval.dataset import Row, load
from itsproxy.proxy.eval.normalise import canonical, first_line, matches


async def _complete(client: openai.AsyncOpenAI, model: str, row: Row, temperature: float, seed: int) -> str:
    params = {k: v for k, v in row.params.items() if k in ("max_tokens", "stop")}
    r = await client.completions.create(model=model, prompt=row.prompt or "", temperature=temperature,
                                        seed=seed, **params)
    return first_line(r.choices[0].text)


async def _row(client, model: str, row: Row, index: int, args) -> dict:
    greedy = await _complete(client, model, row, 0.0, args.seed)
    samples = [await _complete(client, model, row, args.temperature, args.seed * 100003 + index * args.k + j)
               for j in range(args.k)]
    tally = Counter(canonical(s) for s in samples if s)
    top = max(tally.values(), default=0)
    voted = next((s for s in samples if s and tally[canonical(s)] == top), None)
    return {"id": row.id, "greedy": matches(greedy, list(row.answers)),
            "sample": matches(samples[0], list(row.answers)),
            "vote": matches(voted, list(row.answers)),
            "coverage": any(matches(s, list(row.answers)) for s in samples),
            "answers": samples, "greedy_answer": greedy}


async def run(args) -> dict[str, float]:
    rows = [r for r in load(args.dataset, args.limit) if r.prompt is not None]
    client = openai.AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=2, timeout=120)
    sem = asyncio.Semaphore(args.concurrency)
    bar = tqdm(total=len(rows), desc="direct", unit="q")

    async def one(i: int, row: Row) -> dict:
        async with sem:
            out = await _row(client, args.model, row, i, args)
            bar.update()
            return out

    results = await asyncio.gather(*(one(i, r) for i, r in enumerate(rows)))
    bar.close()
    await client.close()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in results)
    n = len(results)
    means = {k: round(sum(r[k] for r in results) / n, 3) for k in ("sample", "greedy", "vote", "coverage")}
    return {"rows": n, **means}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", default="none")
    p.add_argument("--model", default="default")
    p.add_argument("--dataset", default="capitals")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--out", default=None, help="per-row JSONL")
    args = p.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
