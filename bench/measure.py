"""The measurements themselves: added latency at concurrency 1 (paired against the
simulator), throughput and CPU per request at concurrency 32, wall time against a
slow upstream, and RSS over a bounded soak."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from bench.load import Target, bodies, paired, percentile, run_load
from bench.procs import Proc
from bench.scenarios import AUTH, Scenario

CHAT = "/v1/chat/completions"


@dataclass
class Row:
    """One system on one scenario."""

    cpu_ms: float | None = None  # proxy CPU per request, at concurrency 32
    p50_ms: float | None = None  # added latency at concurrency 1
    p99_ms: float | None = None
    rps: float | None = None  # requests/s at concurrency 32
    errors: int = 0
    requests: int = 0
    note: str = ""


@dataclass
class Budget:
    """Request counts per phase: --quick is short, the full run is longer."""

    c1: int
    c32: int
    warmup: int
    slow: int
    soak: int  # requests of the RSS soak, after all the others
    loop_check: int
    max_s: float = 60.0  # per load, whatever the count


QUICK = Budget(c1=120, c32=800, warmup=40, slow=6, soak=2400, loop_check=150, max_s=25.0)
FULL = Budget(c1=400, c32=3000, warmup=100, slow=15, soak=6000, loop_check=400, max_s=60.0)
# Peers spend 10-50 ms of CPU per request: fewer requests give the same resolution.
QUICK_PEER = Budget(c1=60, c32=300, warmup=20, slow=0, soak=0, loop_check=0, max_s=25.0)
FULL_PEER = Budget(c1=200, c32=1000, warmup=50, slow=0, soak=0, loop_check=0, max_s=60.0)


def proxy_target(port: int, sc: Scenario, headers: dict[str, str] | None = None, model: str | None = None) -> Target:
    return Target(port, CHAT, bodies(model or sc.model, **sc.params()), headers=AUTH if headers is None else headers)


def direct_target(sim_port: int, sc: Scenario) -> Target:
    return Target(sim_port, CHAT, bodies(sc.direct_model, **sc.direct_params, **sc.params()), fan=sc.direct_fan)


def run(coro):
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def warm(target: Target, count: int) -> int:
    return run(run_load(target, count, 4, 30)).errors


def added_latency(row: Row, proxied: Target, direct: Target, count: int, max_s: float) -> None:
    via, straight, errors = run(paired(proxied, direct, count, max_s))
    row.errors += errors
    row.requests += len(via)
    if via and straight:
        row.p50_ms = (percentile(via, 50) - percentile(straight, 50)) * 1000
        row.p99_ms = (percentile(via, 99) - percentile(straight, 99)) * 1000


def throughput(row: Row, proc: Proc, target: Target, count: int, max_s: float) -> None:
    cpu0 = proc.cpu()
    result = run(run_load(target, count, 32, max_s))
    cpu = proc.cpu() - cpu0
    row.errors += result.errors
    row.requests += result.count + result.errors
    if result.count:
        row.rps = result.rps
        row.cpu_ms = cpu * 1000 / (result.count + result.errors)
    if result.sample_error:
        row.note = result.sample_error


def scenario(proc: Proc, sim_port: int, sc: Scenario, budget: Budget, model: str | None = None,
             headers: dict[str, str] | None = None) -> Row:
    """Warm up, then added latency at c=1, then throughput and CPU at c=32."""
    row = Row()
    target = proxy_target(proc.port, sc, headers, model)
    row.errors += warm(target, budget.warmup)
    row.requests += budget.warmup
    added_latency(row, target, direct_target(sim_port, sc), budget.c1, budget.max_s)
    throughput(row, proc, target, max(50, int(budget.c32 * sc.weight)), budget.max_s)
    return row


@dataclass
class SlowCheck:
    single_ms: float = float("nan")  # one direct call to the 200 ms upstream
    native_ms: float = float("nan")  # vote n=8 through the proxy, native n
    fan_ms: float = float("nan")  # vote n=8 through the proxy, fanned out

    @property
    def native_ratio(self) -> float:
        return self.native_ms / self.single_ms

    @property
    def fan_ratio(self) -> float:
        return self.fan_ms / self.single_ms


def slow_upstream(proxy_port: int, sim_port: int, count: int, slow_ms: int) -> SlowCheck:
    """Wall time (p50, c=1) of vote n=8 vs one call when the upstream takes slow_ms."""
    out = SlowCheck()
    single = Target(sim_port, CHAT, bodies(f"sim@latency_ms={slow_ms}"))
    out.single_ms = _p50(single, count)
    out.native_ms = _p50(Target(proxy_port, CHAT, bodies("vote8-slow"), headers=AUTH), count)
    out.fan_ms = _p50(Target(proxy_port, CHAT, bodies("vote8-slow-fan"), headers=AUTH), count)
    return out


def _p50(target: Target, count: int) -> float:
    run(run_load(target, 1, 1, 30))  # the first request pays for connections
    result = run(run_load(target, count, 1, 60))
    return percentile(result.latencies, 50) * 1000


@dataclass
class Soak:
    served_before: int = 0
    checkpoints: list[tuple[int, float]] = field(default_factory=list)  # (requests served, RSS MB)

    @property
    def final(self) -> tuple[int, float]:
        return self.checkpoints[-1]

    def growth_mb(self) -> float:
        """RSS change over the second half of the soak (a leak shows here; warm-up does not)."""
        half = (self.served_before + self.final[0]) / 2
        mid = min(self.checkpoints, key=lambda c: abs(c[0] - half))
        return self.final[1] - mid[1]


def soak(proc: Proc, served: int, count: int, max_s: float) -> Soak:
    """`count` more requests (passthrough, vote and stream, in turn), sampling RSS 8 times."""
    out = Soak(served, [(served, proc.rss())])
    mix = [Target(proc.port, CHAT, bodies(m, **p), headers=AUTH)
           for m, p in (("bench-pass", {}), ("vote8", {}), ("bench-pass", {"stream": True}))]
    step = max(100, count // 8)
    deadline = time.monotonic() + max_s
    i, end = 0, served + count
    while served < end and time.monotonic() < deadline:
        result = run(run_load(mix[i % len(mix)], min(step, end - served), 32, max_s))
        served += result.count + result.errors
        out.checkpoints.append((served, proc.rss()))
        i += 1
    return out
