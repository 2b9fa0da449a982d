"""The one markdown table: every figure from the same run, with ratios and targets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.measure import Row, SlowCheck, Soak
from bench.scenarios import SCENARIOS, SLOW_MS


@dataclass
class SystemResult:
    name: str
    status: str = "ok"  # or "not installed", "failed: ..."
    ready_s: float | None = None
    rss_idle_mb: float | None = None
    rss_after: tuple[int, float] | None = None  # (requests served, MB)
    rows: dict[str, Row] = field(default_factory=dict)


@dataclass
class Results:
    mode: str
    ours: SystemResult
    peers: list[SystemResult]
    slow: SlowCheck | None = None
    soak: Soak | None = None
    ready_map_s: float | None = None  # itsproxy when prices come from litellm's cost map
    slow_callbacks: int | None = None
    loop_requests: int = 0
    threshold_ms: float = 100.0


def _f(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cell(system: SystemResult, key: str, what: str) -> str:
    if system.status != "ok":
        return system.status
    row = system.rows.get(key)
    if row is None:
        return "—"
    if what == "cpu":
        return _f(row.cpu_ms)
    if what == "lat":
        return f"+{_f(row.p50_ms)} / +{_f(row.p99_ms)}"
    return _f(row.rps, 0) + (f" ({row.errors} err)" if row.errors else "")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b and not math.isnan(a) else None


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("**yes**" if ok else "**no**")


class Table:
    def __init__(self, results: Results) -> None:
        self.r = results
        self.systems = [results.ours, *results.peers]
        self.litellm = next((p for p in results.peers if p.name.startswith("LiteLLM") and p.status == "ok"), None)
        heads = ["measure", *(s.name for s in self.systems), "itsproxy ÷ LiteLLM", "target", "met"]
        self.lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]

    def add(self, label: str, cells: list[str], ratio: float | None = None, target: str = "",
            ok: bool | None = None) -> None:
        ratio_s = "—" if ratio is None else f"{ratio:.2f}x"
        self.lines.append("| " + " | ".join([label, *cells, ratio_s, target, _met(ok)]) + " |")

    def ours(self, key: str) -> Row:
        return self.r.ours.rows.get(key) or Row()

    def scenario_rows(self) -> None:
        pass_cpu = self.ours("pass").cpu_ms
        lit = self.litellm.rows.get("pass") if self.litellm else None
        limits = {"vote": 2.0, "vote-fan": 4.0}
        for sc in SCENARIOS:
            row = self.ours(sc.key)
            ratio, target, ok = None, "", None
            if sc.key in ("pass", "pass-stream") and self.litellm:
                peer = self.litellm.rows.get(sc.key)
                ratio = _ratio(row.cpu_ms, peer.cpu_ms if peer else None)
                target, ok = "≤ 0.25x LiteLLM", None if ratio is None else ratio <= 0.25
            elif sc.key in limits:
                x = _ratio(row.cpu_ms, pass_cpu)
                target = f"≤ {limits[sc.key]:g}x passthrough ({_f(x)}x)"
                ok = None if x is None else x <= limits[sc.key]
            self.add(f"{sc.label}: proxy CPU ms/req, c=32", [_cell(s, sc.key, "cpu") for s in self.systems], ratio,
                     target, ok)
            lat_ok = None if row.p50_ms is None else row.p50_ms <= 2.0
            self.add(f"{sc.label}: added p50 / p99 ms, c=1", [_cell(s, sc.key, "lat") for s in self.systems],
                     None, "p50 ≤ 2 ms", lat_ok)
            self.add(f"{sc.label}: req/s, c=32", [_cell(s, sc.key, "rps") for s in self.systems],
                     _ratio(row.rps, lit.rps if lit and sc.key == "pass" else None))

    def peer_only_rows(self) -> None:
        opt = next((p for p in self.r.peers if p.name.startswith("OptiLLM")), None)
        if opt is None or opt.status != "ok" or "sc" not in opt.rows:
            return
        blank = ["—"] * (len(self.systems) - 1)
        labels = (("cpu", "proxy CPU ms/req, c=32"), ("lat", "added p50 / p99 ms, c=1"), ("rps", "req/s, c=32"))
        for what, label in labels:
            cells = ["—", *blank]
            cells[self.systems.index(opt)] = _cell(opt, "sc", what)
            self.add(f"OptiLLM self_consistency (its own sampling): {label}", cells)

    def process_rows(self) -> None:
        r = self.r
        if r.slow is not None:
            s = r.slow
            ok = s.native_ratio <= 1.2 and s.fan_ratio <= 1.2
            self.add(f"vote n=8 wall p50 ms, {SLOW_MS} ms upstream (single call {_f(s.single_ms, 0)})",
                     [f"native {_f(s.native_ms, 0)} ({_f(s.native_ratio)}x), fanned {_f(s.fan_ms, 0)} "
                      f"({_f(s.fan_ratio)}x)", *["—"] * len(r.peers)], None, "≤ 1.2x a single call", ok)
        ready = [_f(s.ready_s) if s.status == "ok" else s.status for s in self.systems]
        if r.ready_map_s is not None:
            ready[0] += f" (cost map needed: {_f(r.ready_map_s)})"
        ours_ready = r.ours.ready_s
        self.add("time to ready, s (start → /health 200)", ready,
                 _ratio(ours_ready, self.litellm.ready_s if self.litellm else None), "≤ 4 s",
                 None if ours_ready is None else ours_ready <= 4.0)
        self.add("RSS idle, MB", [_f(s.rss_idle_mb, 0) if s.status == "ok" else s.status for s in self.systems],
                 _ratio(r.ours.rss_idle_mb, self.litellm.rss_idle_mb if self.litellm else None))
        self.rss_after_row()
        if r.slow_callbacks is not None:
            self.add(f"event-loop callbacks > {r.threshold_ms:g} ms (debug loop, {r.loop_requests} requests)",
                     [str(r.slow_callbacks), *["—"] * len(r.peers)], None, "0", r.slow_callbacks == 0)

    def rss_after_row(self) -> None:
        cells = []
        for s in self.systems:
            if s.status != "ok" or s.rss_after is None:
                cells.append(s.status if s.status != "ok" else "—")
            else:
                cells.append(f"{_f(s.rss_after[1], 0)} after {s.rss_after[0]} req")
        growth = self.r.soak.growth_mb() if self.r.soak else None
        if growth is not None:
            cells[0] += f" ({growth:+.1f} MB over the soak's second half)"
        after = self.r.ours.rss_after
        ok = None if after is None else after[1] <= 300 and (growth is None or growth <= 10)
        self.add("RSS after load, MB", cells,
                 _ratio(after[1] if after else None, self.litellm.rss_after[1] if self.litellm and
                        self.litellm.rss_after else None), "≤ 300 MB, not growing", ok)

    def render(self) -> str:
        self.scenario_rows()
        self.peer_only_rows()
        self.process_rows()
        return "\n".join(self.lines)


def render(results: Results) -> str:
    return Table(results).render()
