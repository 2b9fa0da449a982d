"""History buckets as the JSON the dashboard draws: timestamped columns per series and totals.

`t` holds the bucket start times (unix seconds); every column has one value per `t`. Latency
and time-to-first-token quantiles are computed per bucket and over the whole range from the
per-bucket histogram counts (quantiles cannot be averaged); a bucket without requests is null.
`total` is the sum of the routes (the models see the same calls from the other side).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from itsproxy.proxy.telemetry.metrics import DURATION_BUCKETS
from itsproxy.proxy.telemetry.stats import histogram_quantile

Bucket = dict[str, float]
Fields = dict[str, float]

COUNTERS = ("requests", "errors", "calls", "prompt_tokens", "completion_tokens", "cost_usd",
            "extra_usd", "extra_tokens", "saved_usd", "saved_tokens")
SERIES_POINTS = ("requests", "errors", "calls", "prompt_tokens", "completion_tokens", "cost_usd")
BOUNDS = (*DURATION_BUCKETS, math.inf)


def _split(bucket: Bucket, sep: str) -> dict[str, Fields]:
    out: dict[str, Fields] = defaultdict(lambda: defaultdict(float))
    for key, value in bucket.items():
        series, _, field = key.rpartition(sep)
        if series:
            out[series][field] += float(value)
    return out


def _quantiles(fields: Fields, kind: str) -> tuple[float | None, float | None]:
    counts = [fields.get(f"{kind}:{i}", 0.0) for i in range(len(BOUNDS))]
    if not any(counts):
        return None, None
    cumulative, running = [], 0.0
    for le, count in zip(BOUNDS, counts, strict=True):
        running += count
        cumulative.append((le, running))
    return histogram_quantile(0.5, cumulative), histogram_quantile(0.95, cumulative)


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else round(x, 10)


def _totals(fields: Fields) -> dict[str, Any]:
    out: dict[str, Any] = {name: _num(fields.get(name, 0.0)) for name in COUNTERS}
    out["by_status"] = {k.split(":", 1)[1]: _num(v) for k, v in sorted(fields.items()) if k.startswith("status:")}
    for kind in ("lat", "ttft"):
        p50, p95 = _quantiles(fields, kind)
        name = "latency" if kind == "lat" else "ttft"
        out[f"{name}_p50"], out[f"{name}_p95"] = p50, p95
    return out


def _merge(into: Fields, fields: Fields) -> None:
    for k, v in fields.items():
        into[k] += v


def _columns(per_bucket: list[Fields], names: tuple[str, ...], full: bool) -> dict[str, Any]:
    cols: dict[str, Any] = {name: [_num(f.get(name, 0.0)) for f in per_bucket] for name in names}
    if full:
        codes = sorted({k.split(":", 1)[1] for f in per_bucket for k in f if k.startswith("status:")})
        cols["by_status"] = {c: [_num(f.get(f"status:{c}", 0.0)) for f in per_bucket] for c in codes}
        for kind, name in (("lat", "latency"), ("ttft", "ttft")):
            qs = [_quantiles(f, kind) for f in per_bucket]
            cols[f"{name}_p50"], cols[f"{name}_p95"] = [q[0] for q in qs], [q[1] for q in qs]
    return cols


def _series(per_bucket: list[Fields], full: bool) -> dict[str, Any]:
    whole: Fields = defaultdict(float)
    for f in per_bucket:
        _merge(whole, f)
    return {"totals": _totals(whole), "points": _columns(per_bucket, COUNTERS if full else SERIES_POINTS, full)}


def render(starts: list[int], buckets: list[Bucket], sep: str) -> dict[str, Any]:
    split = [_split(b, sep) for b in buckets]
    names = sorted({s for b in split for s in b})
    totals: list[Fields] = []
    for b in split:
        total: Fields = defaultdict(float)
        for series, fields in b.items():
            if series.startswith("route:"):
                _merge(total, fields)
        totals.append(total)

    def group(prefix: str) -> dict[str, Any]:
        return {s[len(prefix):]: _series([b.get(s, {}) for b in split], full=False)
                for s in names if s.startswith(prefix)}

    return {"t": starts, "total": _series(totals, full=True), "routes": group("route:"), "models": group("model:")}
