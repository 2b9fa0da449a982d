"""From per-question lines to one summary row per (route, n): the results table.

Accuracy carries a Wilson 95% interval (honest at small counts and near 0 or 1).
Tokens are per question, everything the proxy spent (its.usage.total). Coverage@n is
the share of questions where at least one candidate was right (what a sound checker
could reach); the judge's FPR / FNR count candidates it approved that were wrong /
rejected that were right. A failed request counts as wrong, and is counted.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

Z95 = 1.959964


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    if total == 0:
        return (0.0, 0.0)
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class Summary:
    route: str
    n: int | None
    questions: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    prompt_tokens: float | None
    completion_tokens: float | None
    tokens: float | None
    cost_usd: float | None
    p50_latency_s: float | None
    verified_rate: float | None
    coverage: float | None
    judge_fpr: float | None
    judge_fnr: float | None
    candidates: float | None
    errors: int
    estimated: int
    first_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarise_group(route: str, n: int | None, recs: list[dict[str, Any]]) -> Summary:
    ok = [r for r in recs if r.get("error") is None]
    correct = sum(bool(r.get("correct")) for r in recs)
    low, high = wilson(correct, len(recs))
    prompt = [r["prompt_tokens"] for r in ok if r.get("prompt_tokens") is not None]
    completion = [r["completion_tokens"] for r in ok if r.get("completion_tokens") is not None]
    costs = [r["cost_usd"] for r in ok if r.get("cost_usd") is not None]
    judge = [r["judge"] for r in ok if r.get("judge")]
    wrong, right = sum(j["wrong"] for j in judge), sum(j["right"] for j in judge)
    p, c = _mean(prompt), _mean(completion)
    return Summary(
        route=route, n=n, questions=len(recs), correct=correct, accuracy=correct / len(recs) if recs else 0.0,
        ci_low=low, ci_high=high, prompt_tokens=p, completion_tokens=c,
        tokens=None if p is None or c is None else p + c,
        cost_usd=_mean(costs) if len(costs) == len(ok) and costs else None,
        p50_latency_s=statistics.median([r["latency_s"] for r in ok]) if ok else None,
        verified_rate=_rate([bool(r["verified"]) for r in ok if r.get("verified") is not None]),
        coverage=_rate([bool(r["coverage"]) for r in ok if "coverage" in r]),
        judge_fpr=sum(j["fp"] for j in judge) / wrong if wrong else None,
        judge_fnr=sum(j["fn"] for j in judge) / right if right else None,
        candidates=_mean([r["candidates"] for r in ok if r.get("candidates") is not None]),
        errors=len(recs) - len(ok), estimated=sum(bool(r.get("estimated")) for r in ok),
        first_error=next((r["error"] for r in recs if r.get("error")), None))


def summarise(records: list[dict[str, Any]], order: list[tuple[str, int | None]]) -> list[Summary]:
    """One Summary per (route, n) in `order`, from the records of this run's rows only."""
    groups: dict[tuple[str, int | None], list[dict[str, Any]]] = {k: [] for k in order}
    for r in records:
        k = (r["route"], r["n"])
        if k in groups:
            groups[k].append(r)
    return [summarise_group(route, n, recs) for (route, n), recs in groups.items() if recs]


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


HEADER = ("route", "n", "cand", "accuracy (95% CI)", "coverage@n", "tokens/q (prompt+compl)", "cost/q $",
          "p50 s", "verified", "judge FPR/FNR", "errors")


def rows_of(s: Summary) -> tuple[str, ...]:
    tokens = "–" if s.tokens is None else f"{s.tokens:.0f} ({s.prompt_tokens:.0f}+{s.completion_tokens:.0f})"
    rates = f"{_fmt(s.judge_fpr, '.2f')}/{_fmt(s.judge_fnr, '.2f')}"
    judge = "–" if s.judge_fpr is None and s.judge_fnr is None else rates
    accuracy = (f"– (all {s.questions} failed)" if s.errors == s.questions
                else f"{s.accuracy:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}] ({s.correct}/{s.questions})")
    return (s.route, "route" if s.n is None else str(s.n), _fmt(s.candidates, ".1f"), accuracy,
            _fmt(s.coverage, ".3f"), tokens, _fmt(s.cost_usd, ".2e"), _fmt(s.p50_latency_s, ".2f"),
            _fmt(s.verified_rate, ".3f"), judge, str(s.errors))


def markdown(summaries: list[Summary]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(rows_of(s)) + " |" for s in summaries]
    failed = [f"- {s.route} n={s.n}: {s.errors} failed, first: {s.first_error}" for s in summaries if s.errors]
    return "\n".join(lines + ([""] + failed if failed else [])) + "\n"
