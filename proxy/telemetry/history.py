"""The dashboard's memory: timestamped buckets of what finished, so the page can show the last
hour (or day) however long it has been open, and, on Redis, after a restart of the proxy.

Fed by one hook on the settlement point (`Services.observe`, once per settled Exchange), the
same `RequestReport` the Prometheus counters read. Two tiers, bounded: 10 s buckets kept 1 h
and 1 min buckets kept 24 h (at most 360 + 1440 buckets; each holds a few dozen numbers per
route and per model). A bucket is a flat map `"<series>|<field>" -> number`, where a series is
`route:<name>` or `model:<name>`, so Redis can keep the very same shape in one hash per bucket
(HINCRBYFLOAT per field, see storage/history_redis.py).

Fields: requests, errors, `status:<code>`, prompt/completion tokens, cost_usd, extra_usd and
extra_tokens (beyond one plain call), saved_usd and saved_tokens (adaptive stopping, estimated),
`lat:<i>` / `ttft:<i>` (counts per histogram bucket of metrics.DURATION_BUCKETS, so quantiles
can be computed for any range); per model: calls, errors and tokens/cost of its calls.
"""

from __future__ import annotations

import bisect
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from itsproxy.proxy.metering.budget_stores import StateError
from itsproxy.proxy.metering.ledger import RequestReport
from itsproxy.proxy.telemetry.history_view import Bucket, render
from itsproxy.proxy.telemetry.metrics import DURATION_BUCKETS

log = logging.getLogger(__name__)
SEP = "|"


@dataclass(frozen=True)
class Tier:
    step_s: int
    keep_s: int


TIERS = (Tier(10, 3600), Tier(60, 86400))
MAX_RANGE_S = TIERS[-1].keep_s


class HistorySink(Protocol):
    """Where buckets are also written (Redis), and read back from when it answers."""

    def push(self, key: str, ttl_s: int, fields: dict[str, float]) -> None: ...

    async def fetch(self, keys: list[str]) -> list[dict[str, float]]: ...


def _le_index(value: float) -> int:
    """Index of the histogram bucket holding `value` (len(DURATION_BUCKETS): +Inf)."""
    return bisect.bisect_left(DURATION_BUCKETS, value)


@functools.lru_cache(maxsize=8192)
def _key(series: str, field: str) -> str:
    """`route:<name>|<field>`: built once per (series, field), not once per request."""
    return f"{series}{SEP}{field}"


def _add(out: dict[str, float], key: str, value: float) -> None:
    out[key] = out.get(key, 0.0) + value


def _merge(into: dict[str, float], more: dict[str, float]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0.0) + value


def increments(r: RequestReport) -> dict[str, float]:
    """One finished request as bucket increments (runs for every request: kept cheap)."""
    route = "route:" + r.route
    out = {_key(route, "requests"): 1.0, _key(route, f"status:{r.status}"): 1.0,
           _key(route, f"lat:{_le_index(max(0.0, r.duration_s))}"): 1.0}
    if r.status >= 400:
        out[_key(route, "errors")] = 1.0
    if r.ttft_s is not None:
        out[_key(route, f"ttft:{_le_index(max(0.0, r.ttft_s))}")] = 1.0
    for field, value in (("extra_usd", r.extra_cost_usd), ("extra_tokens", r.extra_tokens),
                         ("saved_usd", r.saved_cost_usd_estimate), ("saved_tokens", r.tokens_saved_estimate)):
        if value and value > 0:
            out[_key(route, field)] = float(value)
    per_model: dict[str, list[float]] = {}  # model -> [calls, errors, prompt, completion, cost]
    for call in r.calls:
        acc = per_model.get(call.model)
        if acc is None:
            acc = per_model[call.model] = [0, 0, 0, 0, 0.0]
        acc[0] += 1
        acc[1] += call.outcome == "error"
        acc[2] += max(0, call.prompt_tokens)
        acc[3] += max(0, call.completion_tokens)
        acc[4] += max(0.0, call.cost_usd or 0.0)
    for name, (calls, errors, prompt, completion, cost) in per_model.items():
        model = "model:" + name
        out[_key(model, "calls")] = calls
        if errors:
            out[_key(model, "errors")] = errors
        for series in (route, model):
            _add(out, _key(series, "prompt_tokens"), prompt)
            _add(out, _key(series, "completion_tokens"), completion)
            if cost:
                _add(out, _key(series, "cost_usd"), cost)
    return out


def tier_for(span_s: float) -> Tier:
    return next((t for t in TIERS if span_s <= t.keep_s + t.step_s), TIERS[-1])


class History:
    """The in-memory tiers, plus an optional sink (Redis) written alongside and read first."""

    def __init__(self, sink: HistorySink | None = None, clock: Callable[[], float] = time.time) -> None:
        self.sink, self.clock = sink, clock
        self._tiers: dict[int, dict[int, Bucket]] = {t.step_s: {} for t in TIERS}
        self._open: int | None = None  # the finest bucket being filled; folded into coarser tiers once closed

    def hook(self, report: RequestReport, outcome: Any = None) -> None:
        """A `Services.hooks` observer. Never raises: history must not fail a request."""
        try:
            self.record(report)
        except Exception:  # noqa: BLE001 - a history bug must not turn a served answer into a 500
            log.exception("history.record failed for route %r", report.route)

    def record(self, report: RequestReport) -> None:
        """Into the finest tier only (this runs for every request); coarser tiers get whole buckets."""
        now, inc = self.clock(), increments(report)
        fine = TIERS[0]
        start = int(now // fine.step_s) * fine.step_s
        if start != self._open:
            self._fold(now)
            self._open = start
        buckets = self._tiers[fine.step_s]
        bucket = buckets.get(start)
        if bucket is None:
            bucket = buckets[start] = {}
        _merge(bucket, inc)
        if self.sink is not None:
            for tier in TIERS:
                at = int(now // tier.step_s) * tier.step_s
                self.sink.push(f"{tier.step_s}:{at}", tier.keep_s + tier.step_s, inc)

    def _fold(self, now: float) -> None:
        """The finest bucket that just closed, added to the coarser tiers; every tier trimmed."""
        if self._open is not None:
            closed = self._tiers[TIERS[0].step_s].get(self._open, {})
            for tier in TIERS[1:]:
                at = int(self._open // tier.step_s) * tier.step_s
                _merge(self._tiers[tier.step_s].setdefault(at, {}), closed)
        for tier in TIERS:
            buckets = self._tiers[tier.step_s]
            while buckets and next(iter(buckets)) < now - tier.keep_s - tier.step_s:
                del buckets[next(iter(buckets))]  # insertion order is time order

    def _bucket(self, tier: Tier, start: int) -> Bucket:
        """A bucket as it stands: a coarse one with the open fine bucket not yet folded into it."""
        bucket = self._tiers[tier.step_s].get(start, {})
        if tier is TIERS[0] or self._open is None or int(self._open // tier.step_s) * tier.step_s != start:
            return bucket
        merged = dict(bucket)
        _merge(merged, self._tiers[TIERS[0].step_s].get(self._open, {}))
        return merged

    async def query(self, since: float) -> dict[str, Any]:
        """Points from `since` (unix seconds) to now, at the finest tier that still holds them."""
        now = self.clock()
        since = max(since, now - MAX_RANGE_S)
        tier = tier_for(now - since)
        first = int(since // tier.step_s) * tier.step_s
        starts = list(range(first, int(now // tier.step_s) * tier.step_s + 1, tier.step_s))
        source = "memory"
        buckets: list[Bucket] = [self._bucket(tier, s) for s in starts]
        if self.sink is not None:
            try:
                buckets = await self.sink.fetch([f"{tier.step_s}:{s}" for s in starts])
                source = "redis"
            except StateError as exc:  # the sink logged and counted it; this replica's own memory answers
                source = f"memory (shared history unavailable: {exc})"
        return {"since": since, "until": now, "step_s": tier.step_s, "source": source,
                **render(starts, buckets, SEP)}
