"""Adaptive compute benchmark: fixed-n voting vs adaptive stopping, through the real proxy.

    python -m bench.adaptive            # full run: 300 questions, every config (~minutes on 2 cores)
    python -m bench.adaptive --quick    # 60 questions, fewer configs (< 2 minutes)

Everything goes over loopback HTTP: the simulator (`proxy.simulator`) and the proxy
run in background threads of this process, and a pool of 8 client threads sends
the questions with the openai SDK. Every configuration gets the same questions and
the same client `seed` per question, so the comparison is paired (same question
difficulty, same request seeds; the samples themselves differ between configs
because the proxy derives a per-batch seed from the client seed).

Columns:
- accuracy: the returned answer equals A + B;
- generated / total: completion / all tokens of the responses' `usage` (the ledger:
  in stream mode it includes what cancelled streams produced before being closed);
- calls: upstream chat calls, from the simulator's `/stats` delta;
- drawn: mean candidates started (`its.stop.drawn`; n for fixed); cands: mean
  candidates that finished and were voted on (`its.candidates`);
- gen ratio / total ratio: vs fixed-n of the same mix and max n; Δacc in points;
- usage-sim: responses' total tokens minus what the simulator billed (0 in batch
  mode; in stream mode cancelled streams are counted by the proxy from what it
  received, by the simulator from what it sent).

Modes (`generate.adaptive.mode`): `batch` draws `batch` candidates per round with one
native-n call and decides between rounds (it draws more at once when the rule
cannot stop sooner anyway); `stream` keeps `batch` single-candidate streams in
flight and cancels the rest when the rule is met.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from proxy.llm import OFFLINE_ENV

for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)

import httpx  # noqa: E402
import openai  # noqa: E402

from proxy.app import create_app  # noqa: E402
from proxy.config import parse_config  # noqa: E402
from proxy.serving import embedded_config, serve_in_thread  # noqa: E402
from proxy.simulator import SimConfig, last_number, questions  # noqa: E402
from proxy.simulator import serve_in_thread as serve_simulator  # noqa: E402

QUESTION_SEED = 2024  # proxy.simulator.questions(seed, count)
SIM_SEED = 7  # the simulator's seed: each question's p and common wrong answer
REQUEST_SEED = 10_000  # question i is always asked with seed REQUEST_SEED + i
CONFIDENCE = 0.95  # beta and predictive
WINDOW = 4  # window rule
TEMPERATURE = 0.8
CONCURRENCY = 8
# Simulated serving: time to first token (with jitter), and decode time per streamed
# 3-token chunk, so that a cancelled stream is cut part-way like a real one.
LATENCY_MS, JITTER_MS, STREAM_DELAY_MS = 4.0, 6.0, 2.0

MIXES = {"70% easy": 0.7, "hard only": 0.0}


@dataclass(frozen=True)
class Variant:
    rule: str  # fixed | beta | window | predictive
    mode: str = "batch"  # batch | stream
    batch: int = 1

    @property
    def label(self) -> str:
        if self.rule == "fixed":
            return "fixed (vote, native n)"
        return f"{self.rule} / {self.mode} {self.batch}"

    def route(self, max_n: int) -> dict[str, Any]:
        name = f"{self.rule}-{self.mode}{self.batch}-{max_n}"
        generate: dict[str, Any] = {"model": "sim", "n": max_n, "temperature": TEMPERATURE}
        if self.rule != "fixed":
            generate["adaptive"] = {"rule": self.rule, "confidence": CONFIDENCE, "window": WINDOW, "min": 2,
                                    "batch": self.batch, "mode": self.mode}
        return {"name": name, "match": {"model": name}, "generate": generate,
                "select": [{"vote": {"extract": "number"}}], "limits": {"max_n": max_n, "timeout_s": 120}}


FIXED = Variant("fixed")
FULL_VARIANTS = [FIXED] + [Variant(rule, mode, batch) for rule in ("beta", "window", "predictive")
                           for mode, batch in (("batch", 1), ("batch", 4), ("stream", 4))]
QUICK_VARIANTS = [FIXED, Variant("beta", "batch", 1), Variant("beta", "batch", 4), Variant("beta", "stream", 4),
                  Variant("predictive", "batch", 1)]
# (mix, max n) pairs
FULL_PLAN = [("70% easy", 40), ("hard only", 40), ("hard only", 16)]
QUICK_PLAN = [("70% easy", 40), ("hard only", 40)]


@dataclass
class Result:
    mix: str
    max_n: int
    variant: Variant
    questions: int = 0
    correct: int = 0
    completion: int = 0
    total: int = 0
    prompt: int = 0
    calls: int = 0  # simulator /stats delta
    ledger_calls: int = 0  # sum of its.usage.calls
    cancelled: int = 0  # calls metered as cancelled
    drawn: list[int] = field(default_factory=list)
    candidates: list[int] = field(default_factory=list)
    sim_total: int = 0  # what the simulator billed
    sim_cancelled_streams: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.questions if self.questions else 0.0


def sim_models(sim_url: str) -> list[dict[str, Any]]:
    return [{"model_name": "sim", "litellm_params": {"model": "openai/sim", "api_base": f"{sim_url}/v1",
                                                     "api_key": "bench"}}]


def ask(client: openai.OpenAI, model: str, question: str, seed: int) -> dict[str, Any]:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], seed=seed)
    its = r.model_extra["its"]
    return {"content": r.choices[0].message.content or "", "completion": r.usage.completion_tokens,
            "prompt": r.usage.prompt_tokens, "total": r.usage.total_tokens, "calls": its["usage"]["calls"],
            "cancelled": its["usage"]["calls_by_outcome"].get("cancelled", 0),
            "drawn": (its.get("stop") or {}).get("drawn", its["candidates"]), "candidates": its["candidates"]}


def run_config(client: openai.OpenAI, pool: ThreadPoolExecutor, sim_url: str, mix: str, max_n: int,
               variant: Variant, qs: list[tuple[str, int]]) -> Result:
    res = Result(mix, max_n, variant)
    model = variant.route(max_n)["name"]
    before = httpx.get(f"{sim_url}/stats").json()
    started = time.monotonic()
    futures = [pool.submit(ask, client, model, q, REQUEST_SEED + i) for i, (q, _) in enumerate(qs)]
    for (q, truth), fut in zip(qs, futures):
        res.questions += 1
        try:
            r = fut.result()
        except openai.APIError as exc:
            res.errors += 1
            print(f"  ! {model} {q}: {exc}", file=sys.stderr)
            continue
        res.correct += last_number(r["content"]) == truth
        res.completion += r["completion"]
        res.prompt += r["prompt"]
        res.total += r["total"]
        res.ledger_calls += r["calls"]
        res.cancelled += r["cancelled"]
        res.drawn.append(r["drawn"])
        res.candidates.append(r["candidates"])
    res.seconds = time.monotonic() - started
    after = httpx.get(f"{sim_url}/stats").json()
    res.calls = after["requests"] - before["requests"]
    res.sim_total = after["total_tokens"] - before["total_tokens"]
    res.sim_cancelled_streams = after["streams_cancelled"] - before["streams_cancelled"]
    return res


def run_mix(mix: str, max_ns: list[int], variants: list[Variant], qs: list[tuple[str, int]],
            log) -> list[Result]:
    sim_cfg = SimConfig(seed=SIM_SEED, easy_share=MIXES[mix], latency_ms=LATENCY_MS,
                        latency_jitter_ms=JITTER_MS, stream_delay_ms=STREAM_DELAY_MS)
    results = []
    with serve_simulator(sim_cfg) as sim:
        routes = [v.route(m) for m in max_ns for v in variants]
        config = parse_config({"model_list": sim_models(sim.url), "routes": routes,
                               "server": {"max_upstream_concurrency": 512}})
        handle = serve_in_thread(embedded_config(create_app(config)))
        client = openai.OpenAI(base_url=handle.base_url, api_key="none", max_retries=0, timeout=120)
        try:
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                for m in max_ns:
                    for v in variants:
                        r = run_config(client, pool, sim.url, mix, m, v, qs)
                        results.append(r)
                        log(f"  {mix:9s} max {m:2d} {v.label:24s} acc {r.accuracy:6.1%} gen {r.completion:7d} "
                            f"calls {r.calls:5d} {r.seconds:5.1f}s")
        finally:
            client.close()
            handle.stop()
    return results


# ---------------------------------------------------------------- report

def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def table(results: list[Result]) -> str:
    head = ("| mix | max n | rule / mode | accuracy | generated tokens | total tokens | upstream calls "
            "| drawn | cands | gen ratio | total ratio | Δacc (pts) | usage−sim |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    base: dict[tuple[str, int], Result] = {}
    for r in results:
        if r.variant == FIXED:
            base[(r.mix, r.max_n)] = r
    for r in results:
        f = base.get((r.mix, r.max_n))
        gen_ratio = r.completion / f.completion if f and f.completion else float("nan")
        tot_ratio = r.total / f.total if f and f.total else float("nan")
        dacc = 100 * (r.accuracy - f.accuracy) if f else float("nan")
        lines.append(
            f"| {r.mix} | {r.max_n} | {r.variant.label} | {_pct(r.accuracy)} | {r.completion:,} | {r.total:,} "
            f"| {r.calls:,} | {statistics.fmean(r.drawn or [0]):.1f} | {statistics.fmean(r.candidates or [0]):.1f} "
            f"| {_pct(gen_ratio)} | {_pct(tot_ratio)} | {dacc:+.1f} | {r.total - r.sim_total:+,} |")
    return "\n".join(lines)


def find(results: list[Result], mix: str, max_n: int, v: Variant) -> Result | None:
    return next((r for r in results if r.mix == mix and r.max_n == max_n and r.variant == v), None)


def verdicts(results: list[Result]) -> list[str]:
    out = []
    easy_fixed = find(results, "70% easy", 40, FIXED)
    if easy_fixed:
        out.append("Target, 70% easy (adaptive <= 30% of fixed-40's generated tokens, accuracy within 1 point):")
        for r in results:
            if r.mix != "70% easy" or r.max_n != 40 or r.variant == FIXED:
                continue
            ratio = r.completion / easy_fixed.completion
            dacc = 100 * (r.accuracy - easy_fixed.accuracy)
            ok = ratio <= 0.30 and dacc >= -1.0
            out.append(f"  - {r.variant.label}: {_pct(ratio)} of tokens, {dacc:+.1f} pts -> "
                       f"{'met' if ok else 'NOT met'}")
    for max_n in (40, 16):
        f = find(results, "hard only", max_n, FIXED)
        b = find(results, "hard only", max_n, Variant("beta", "batch", 1))
        if f and b:
            out.append(f"Hard only, max {max_n}: beta drawing one at a time (batch 1) spends "
                       f"{_pct(b.completion / f.completion)} of fixed-{max_n}'s generated tokens "
                       f"({100 * (b.accuracy - f.accuracy):+.1f} pts).")
    out.append("Predictive vs beta (same mode, batch): generated tokens and accuracy:")
    for r in results:
        if r.variant.rule != "predictive":
            continue
        b = find(results, r.mix, r.max_n, Variant("beta", r.variant.mode, r.variant.batch))
        if b:
            out.append(f"  - {r.mix}, max {r.max_n}, {r.variant.mode} {r.variant.batch}: predictive "
                       f"{r.completion:,} tok / {_pct(r.accuracy)} vs beta {b.completion:,} tok / {_pct(b.accuracy)}")
    out.append("Native n per batch (batch 4) vs stream-and-cancel (stream 4), total tokens and calls:")
    for r in results:
        if r.variant.mode != "stream":
            continue
        b = find(results, r.mix, r.max_n, Variant(r.variant.rule, "batch", r.variant.batch))
        if b:
            out.append(f"  - {r.mix}, max {r.max_n}, {r.variant.rule}: batch {b.total:,} total "
                       f"({b.completion:,} generated, {b.calls:,} calls) vs stream {r.total:,} total "
                       f"({r.completion:,} generated, {r.calls:,} calls, {r.cancelled:,} cancelled)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 questions, fewer configs")
    ap.add_argument("--questions", type=int, default=None, help="number of questions (default 300, quick 60)")
    args = ap.parse_args(argv)
    count = args.questions or (60 if args.quick else 300)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    variants = QUICK_VARIANTS if args.quick else FULL_VARIANTS
    qs = questions(QUESTION_SEED, count)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    started = time.monotonic()
    results: list[Result] = []
    for mix in MIXES:
        max_ns = [m for mx, m in plan if mx == mix]
        if max_ns:
            results += run_mix(mix, max_ns, variants, qs, log)
    print(f"Adaptive compute: {count} questions (questions({QUESTION_SEED}, {count}), simulator seed {SIM_SEED}), "
          f"confidence {CONFIDENCE}, window {WINDOW}, min 2, {CONCURRENCY} concurrent clients, "
          f"{time.monotonic() - started:.0f}s.\n")
    print(table(results))
    print()
    print("\n".join(verdicts(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
