"""GET /v1/its/stats: a JSON digest of the Prometheus registry, for the dashboard page.

Computed from the same registry that /metrics renders (`metrics.read_registry()`), never
from separate bookkeeping, so the page and Prometheus cannot drift apart.

Beyond the per-route figures, the JSON carries `total` (all routes merged, same shape) and
`latency_s.buckets` (cumulative histogram), so the page can aggregate and compute windowed
quantiles itself; quantiles cannot be averaged across routes.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

from itsproxy.proxy.telemetry import metrics

INF = math.inf


@dataclass
class _Raw:
    """The counters of one route (or of all routes merged), as read from the registry."""

    by_status: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    tokens: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # prompt, completion, selected, extra
    cost_usd: float = 0.0
    cost_unknown: float = 0.0
    calls: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # by outcome
    hist: dict[str, dict[float, float]] = field(  # histogram name -> {le: cumulative count}
        default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    hist_sum: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    hist_count: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    verified: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counters: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # disagreements, saved_*

    def merge(self, other: _Raw) -> None:
        for mine, theirs in ((self.by_status, other.by_status), (self.tokens, other.tokens),
                             (self.calls, other.calls), (self.hist_sum, other.hist_sum),
                             (self.hist_count, other.hist_count), (self.verified, other.verified),
                             (self.counters, other.counters)):
            for k, v in theirs.items():
                mine[k] += v
        for name, buckets in other.hist.items():
            for le, v in buckets.items():
                self.hist[name][le] += v
        self.cost_usd += other.cost_usd
        self.cost_unknown += other.cost_unknown


_DURATION = "its_request_duration_seconds"
_CANDIDATES = "its_candidates"
_AGREEMENT = "its_selection_agreement"
_HISTOGRAMS = (_DURATION, _CANDIDATES, _AGREEMENT)
_SIMPLE = {  # sample name -> key in _Raw.counters / tokens
    "its_judge_checker_disagreements_total": ("counters", "disagreements"),
    "its_candidates_saved_total": ("counters", "saved_candidates"),
    "its_tokens_saved_estimate_total": ("counters", "saved_tokens"),
    "its_selected_tokens_total": ("tokens", "selected"),
    "its_extra_tokens_total": ("tokens", "extra"),
}


def _apply(raw: _Raw, name: str, labels: dict[str, str], value: float) -> None:
    """Fold one sample into its route's counters."""
    if name == "its_requests_total":
        raw.by_status[labels.get("status", "")] += value
    elif name == "its_tokens_total":
        raw.tokens[labels.get("kind", "")] += value
    elif name == "its_upstream_calls_total":
        raw.calls[labels.get("outcome", "")] += value
    elif name == "its_cost_usd_total":
        raw.cost_usd += value
    elif name == "its_cost_unknown_calls_total":
        raw.cost_unknown += value
    elif name == "its_verified_total":
        raw.verified[labels.get("result", "")] += value
    elif name in _SIMPLE:
        attr, key = _SIMPLE[name]
        getattr(raw, attr)[key] += value
    else:
        base, _, suffix = name.rpartition("_")
        if base in _HISTOGRAMS:
            if suffix == "bucket":
                raw.hist[base][float(labels["le"])] += value
            elif suffix == "sum":
                raw.hist_sum[base] += value
            elif suffix == "count":
                raw.hist_count[base] += value


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over (upper bound, cumulative count) pairs.

    Linear interpolation inside the bucket holding the q-th rank; the first bucket starts
    at 0; a rank in the +Inf bucket yields the highest finite bound. None when empty.
    """
    buckets = sorted(buckets)
    if len(buckets) < 2 or buckets[-1][0] != INF or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    i = next(i for i, (_, cum) in enumerate(buckets) if cum >= rank)
    upper, cum = buckets[i]
    if upper == INF:
        return buckets[-2][0]
    lower, below = (0.0, 0.0) if i == 0 else buckets[i - 1]
    if i == 0 and upper <= 0:
        return upper
    count = cum - below
    if count <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / count


def _hist(raw: _Raw, name: str) -> list[tuple[float, float]]:
    return sorted(raw.hist.get(name, {}).items())


def _mean(total: float, count: float) -> float:
    return total / count if count else 0.0


def _num(x: float):
    """Counts as ints in the JSON; they are integral floats in the registry."""
    return int(round(x)) if float(x).is_integer() else x


def _latency(raw: _Raw) -> dict:
    buckets = _hist(raw, _DURATION)
    finite = [(le, c) for le, c in buckets if le != INF]
    return {
        "p50": histogram_quantile(0.5, buckets) or 0.0,
        "p95": histogram_quantile(0.95, buckets) or 0.0,
        "count": _num(raw.hist_count[_DURATION]),
        "sum": raw.hist_sum[_DURATION],
        "buckets": {"le": [le for le, _ in finite], "cumulative": [_num(c) for _, c in finite]},
    }


def _agreement(raw: _Raw) -> dict:
    cumulative = dict(_hist(raw, _AGREEMENT))
    les = list(metrics.AGREEMENT_BUCKETS)
    counts, below = [], 0.0
    for le in les:  # the registry's buckets are cumulative; the page draws bars per bucket
        cum = cumulative.get(le, below)
        counts.append(_num(cum - below))
        below = cum
    count = raw.hist_count[_AGREEMENT]
    return {"le": les, "counts": counts, "count": _num(count),
            "mean": _mean(raw.hist_sum[_AGREEMENT], count)}


def _format(raw: _Raw) -> dict:
    prompt, completion = raw.tokens["prompt"], raw.tokens["completion"]
    total = prompt + completion
    passed, failed = raw.verified["pass"], raw.verified["fail"]
    cand_count, cand_sum = raw.hist_count[_CANDIDATES], raw.hist_sum[_CANDIDATES]
    return {
        "requests": _num(sum(raw.by_status.values())),
        # 4xx count too: an unverified answer refused with 422 is a failure the operator must see.
        "errors": _num(sum(v for s, v in raw.by_status.items() if s.isdigit() and int(s) >= 400)),
        "by_status": {s: _num(v) for s, v in sorted(raw.by_status.items())},
        "tokens": {"prompt": _num(prompt), "completion": _num(completion), "total": _num(total),
                   "selected": _num(raw.tokens["selected"]), "extra": _num(raw.tokens["extra"])},
        "extra_ratio": raw.tokens["extra"] / total if total else 0.0,  # share of spend beyond the answer
        "cost_usd": round(raw.cost_usd, 10),
        "cost_unknown_calls": _num(raw.cost_unknown),
        "upstream_calls": {k: _num(raw.calls[k]) for k in ("ok", "error", "cancelled")},
        "latency_s": _latency(raw),
        "candidates": {"count": _num(cand_count), "sum": _num(cand_sum), "mean": _mean(cand_sum, cand_count)},
        "agreement": _agreement(raw),
        "verified": {"pass": _num(passed), "fail": _num(failed),
                     "rate": passed / (passed + failed) if passed + failed else None},
        "judge_checker_disagreements": _num(raw.counters["disagreements"]),
        "saved": {"candidates": _num(raw.counters["saved_candidates"]),
                  "tokens_estimate": _num(raw.counters["saved_tokens"])},
    }


def stats_snapshot() -> dict:
    """The stats JSON, read from the metrics registry right now."""
    routes: dict[str, _Raw] = defaultdict(_Raw)
    inflight = 0.0
    for family in metrics.read_registry().collect():
        for sample in family.samples:
            if sample.name == "its_inflight_requests":
                inflight += sample.value
            elif "route" in sample.labels and sample.name.startswith("its_"):
                _apply(routes[sample.labels["route"]], sample.name, sample.labels, sample.value)
    total = _Raw()
    for raw in routes.values():
        total.merge(raw)
    return {
        "generated_at": time.time(),
        "inflight": _num(inflight),
        "routes": {name: _format(routes[name]) for name in sorted(routes)},
        "total": _format(total),
    }
