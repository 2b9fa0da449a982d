"""Adaptive compute benchmark: fixed-n voting vs adaptive stopping, through the real proxy.

    python -m bench.adaptive            # full run: 300 questions, every config (~minutes on 2 cores)
    python -m bench.adaptive --quick    # 60 questions, fewer configs (< 2 minutes)

Everything goes over loopback HTTP: the simulator (`itsproxy.proxy.simulator`) and the proxy
run in background threads of this process, and a pool of 8 client threads sends
the questions with the openai SDK. Every configuration gets the same 300 questions
(`questions(2024, 300)`, same simulator seed, so the same p per question) and the
same client `seed` per question: the comparison is paired by question. (Samples
are seeded per call from the client seed and the candidate's start index, so two
configs share samples only where their calls line up, e.g. all stream-mode rules.)

Columns:
- accuracy: the returned answer equals A + B;
- generated / total: completion / all tokens of the responses' `usage` (the ledger;
  in stream mode it includes what cancelled streams produced before being closed);
- upstream calls: chat calls the simulator received (`/stats` delta);
- drawn: mean candidates started (`its.stop.drawn`; n for fixed); cands: mean
  candidates that finished and were voted on (`its.candidates`);
- gen ratio / total ratio: vs fixed-n of the same mix and max n;
- Δacc: accuracy minus fixed-n's, in points, with the paired standard error;
- usage−sim: the responses' total tokens minus what the simulator billed. 0 in
  batch mode. In stream mode negative: the simulator bills the prompt of every
  stream it started plus the chunks it wrote, while the proxy meters a cancelled
  stream from what it received, and as 0 tokens when no content had arrived yet.

Modes (`generate.adaptive.mode`): `batch` draws `batch` candidates per round with one
native-n call and decides between rounds (it draws more at once when the rule
cannot stop sooner anyway); `stream` keeps `batch` single-candidate streams in
flight and cancels the rest when the rule is met.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from itsproxy.proxy.upstream.litellm_loader import OFFLINE_ENV

for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)

import httpx  # noqa: E402
import openai  # noqa: E402

from itsproxy.proxy.config import parse_config  # noqa: E402
from itsproxy.proxy.http.app import create_app  # noqa: E402
from itsproxy.proxy.serving import embedded_config, serve_in_thread  # noqa: E402
from itsproxy.proxy.simulator import SimConfig, last_number, questions  # noqa: E402
from itsproxy.proxy.simulator import serve_in_thread as serve_simulator  # noqa: E402

QUESTION_SEED = 2024  # itsproxy.proxy.simulator.questions(seed, count)
SIM_SEED = 7  # the simulator's seed: each question's p and common wrong answer
REQUEST_SEED = 10_000  # question i is always asked with seed REQUEST_SEED + i
CONFIDENCE = 0.95  # beta and predictive
WINDOW = 4  # window rule
TEMPERATURE = 0.8
CONCURRENCY = 8
# Simulated serving: time to first token (with jitter), and decode time per streamed
# 3-token chunk, so that a cancelled stream is cut part-way like a real one.
LATENCY_MS, JITTER_MS, STREAM_DELAY_MS = 1.0, 3.0, 3.0

MIXES = {"70% easy": 0.7, "hard only": 0.0}


@dataclass(frozen=True)
class Variant:
    rule: str  # fixed | beta | window | predictive
    mode: str = "batch"  # batch | stream | stream_n
    batch: int = 1  # unused by stream_n (one call with n = max)

    @property
    def label(self) -> str:
        if self.rule == "fixed":
            return "fixed (vote, native n)"
        if self.mode == "stream_n":
            return f"{self.rule} / stream_n"
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
# `--stream-n` adds mode stream_n (one streaming call with n = max, closed at the stop). Off by
# default: the simulator sends every choice's finish_reason only after all choices' content
# (proxy/simulator/wire.py stream_events), so no choice finishes early and nothing can be saved.
STREAM_N_NOTE = ("stream_n: the simulator interleaves the n choices token by token (as OpenAI and vLLM do), so by "
                 "the time the first few choices finish, the others are mostly decoded: closing the call saves little.")
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
    finished_unused: int = 0  # calls that finished (outcome ok) but whose candidate is not among its.candidates
    over_max: int = 0  # requests that started more than max n candidates
    right: list[bool] = field(default_factory=list)  # per question, in question order (errors count wrong)
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
            "ok": its["usage"]["calls_by_outcome"].get("ok", 0),
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
            res.right.append(False)
            print(f"  ! {model} {q}: {exc}", file=sys.stderr)
            continue
        res.right.append(last_number(r["content"]) == truth)
        res.correct += res.right[-1]
        res.completion += r["completion"]
        res.prompt += r["prompt"]
        res.total += r["total"]
        res.ledger_calls += r["calls"]
        res.cancelled += r["cancelled"]
        if variant.mode == "stream":  # one call per candidate there
            res.finished_unused += r["ok"] - r["candidates"]
        res.over_max += r["drawn"] > max_n
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


def paired_delta(r: Result, base: Result) -> tuple[float, float]:
    """Accuracy difference in points and its standard error, paired by question."""
    d = [int(a) - int(b) for a, b in zip(r.right, base.right)]
    if len(d) < 2:
        return 0.0, float("nan")
    mean = statistics.fmean(d)
    return 100 * mean, 100 * statistics.stdev(d) / math.sqrt(len(d))


def find(results: list[Result], mix: str, max_n: int, v: Variant) -> Result | None:
    return next((r for r in results if r.mix == mix and r.max_n == max_n and r.variant == v), None)


def table(results: list[Result]) -> str:
    head = ("| mix | max n | rule / mode | accuracy | generated tokens | total tokens | upstream calls "
            "| drawn | cands | gen ratio | total ratio | Δacc pts (±SE) | usage−sim |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        f = find(results, r.mix, r.max_n, FIXED)
        gen_ratio = r.completion / f.completion if f and f.completion else float("nan")
        tot_ratio = r.total / f.total if f and f.total else float("nan")
        dacc, se = paired_delta(r, f) if f else (float("nan"), float("nan"))
        shown = "—" if r is f else f"{dacc:+.1f} (±{se:.1f})"
        lines.append(
            f"| {r.mix} | {r.max_n} | {r.variant.label} | {_pct(r.accuracy)} | {r.completion:,} | {r.total:,} "
            f"| {r.calls:,} | {statistics.fmean(r.drawn or [0]):.1f} | {statistics.fmean(r.candidates or [0]):.1f} "
            f"| {_pct(gen_ratio)} | {_pct(tot_ratio)} | {shown} | {r.total - r.sim_total:+,} |")
    return "\n".join(lines)


def verdicts(results: list[Result]) -> list[str]:
    out = []
    easy_fixed = find(results, "70% easy", 40, FIXED)
    if easy_fixed:
        out.append("Target, 70% easy: adaptive <= 30% of fixed-40's generated tokens, accuracy within 1 point:")
        for r in results:
            if r.mix != "70% easy" or r.max_n != 40 or r.variant == FIXED:
                continue
            ratio = r.completion / easy_fixed.completion
            dacc, se = paired_delta(r, easy_fixed)
            ok = ratio <= 0.30 and dacc >= -1.0
            out.append(f"  - {r.variant.label}: {_pct(ratio)} of the tokens, {dacc:+.1f} pts (±{se:.1f}) -> "
                       f"{'met' if ok else 'NOT met'}")
    for max_n in (40, 16):
        f = find(results, "hard only", max_n, FIXED)
        if not f:
            continue
        parts = []
        for r in results:
            if r.mix == "hard only" and r.max_n == max_n and r.variant != FIXED:
                dacc, _ = paired_delta(r, f)
                parts.append(f"{r.variant.label} {_pct(r.completion / f.completion)} ({dacc:+.1f} pts)")
        out.append(f"Hard only, max {max_n}, generated tokens vs fixed-{max_n}: " + "; ".join(parts) + ".")
    out.append("Predictive vs beta (same mode and batch): generated tokens, accuracy:")
    for r in results:
        if r.variant.rule != "predictive":
            continue
        b = find(results, r.mix, r.max_n, Variant("beta", r.variant.mode, r.variant.batch))
        if b:
            dacc, se = paired_delta(r, b)
            out.append(f"  - {r.mix}, max {r.max_n}, {r.variant.label.split(' / ')[1]}: predictive "
                       f"{r.completion:,} / {_pct(r.accuracy)} vs beta {b.completion:,} / {_pct(b.accuracy)} "
                       f"(tokens x{r.completion / b.completion:.2f}, {dacc:+.1f} pts ±{se:.1f})")
    with_n = any(r.variant.mode == "stream_n" for r in results)
    out.append("The n question: native n per batch (batch 4) vs single-candidate streams cancelled at the stop "
               "(stream 4)" + (" vs one streaming n = max call closed at the stop (stream_n)" if with_n else "")
               + "; total tokens as the simulator billed them (generated per usage), upstream calls, "
               "relative to batch 4:")
    for b in results:
        if b.variant.mode != "batch" or b.variant.batch != 4:
            continue
        parts = [f"batch 4 {b.sim_total:,} ({b.completion:,}), {b.calls:,} calls"]
        for mode in ("stream", "stream_n"):
            r = find(results, b.mix, b.max_n, Variant(b.variant.rule, mode, 4 if mode == "stream" else 1))
            if r:
                parts.append(f"{r.variant.label.split(' / ')[1]} {r.sim_total:,} ({r.completion:,}), {r.calls:,} calls "
                             f"= x{r.sim_total / b.sim_total:.2f} total, x{r.completion / b.completion:.2f} generated")
        out.append(f"  - {b.mix}, max {b.max_n}, {b.variant.rule}: " + "; ".join(parts))
    odd = [r for r in results if r.over_max or r.finished_unused]
    if odd:
        out.append("Stream-mode waste (see strategies/adaptive_loop.py): requests that started more than max n "
                   "candidates / finished streams whose candidate was dropped at the stop:")
        out += [f"  - {r.mix}, max {r.max_n}, {r.variant.label}: {r.over_max} / {r.finished_unused}" for r in odd]
    return out


class _QuietDisconnects(logging.Filter):
    """The simulator logs a traceback when the proxy closes a request it is still reading
    (a stream cancelled before it started); expected here, so counted, not printed."""

    count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "ClientDisconnect":
            _QuietDisconnects.count += 1
            return False
        return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="60 questions, fewer configs")
    ap.add_argument("--questions", type=int, default=None, help="number of questions (default 300, quick 60)")
    ap.add_argument("--confidence", type=float, default=CONFIDENCE, help="beta/predictive confidence (0.95)")
    ap.add_argument("--stream-n", action="store_true", help="also run mode stream_n (see STREAM_N_NOTE)")
    args = ap.parse_args(argv)
    globals()["CONFIDENCE"] = args.confidence  # read by Variant.route and the header
    count = args.questions or (60 if args.quick else 300)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    variants = QUICK_VARIANTS if args.quick else FULL_VARIANTS
    if args.stream_n:
        variants = variants + [Variant(rule, "stream_n") for rule in dict.fromkeys(
            v.rule for v in variants if v.rule != "fixed")]
    qs = questions(QUESTION_SEED, count)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    logging.getLogger("uvicorn.error").addFilter(_QuietDisconnects())
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
    if args.stream_n:
        print(STREAM_N_NOTE)
    if _QuietDisconnects.count:
        print(f"\n(The simulator logged {_QuietDisconnects.count} ClientDisconnect tracebacks, silenced: "
              "stream-mode calls the proxy closed while the simulator was still reading the request.)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
