"""`python -m bench [--quick]`: simulator, itsproxy and any installed peer as separate
processes on 127.0.0.1, bounded loads, one markdown table. See bench/README.md."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time

from bench import measure, peers
from bench.load import run_load
from bench.measure import FULL, FULL_PEER, QUICK, QUICK_PEER, Budget
from bench.procs import Proc, free_port, itsproxy, simulator
from bench.report import Results, SystemResult, render
from bench.scenarios import SCENARIOS, Scenario, proxy_config, write_yaml

LOOP_DEBUG_MS = 100.0
LOOP_ENV = {"ITSPROXY_LOOP_DEBUG_MS": f"{LOOP_DEBUG_MS:g}"}
SC = Scenario("sc", "self-consistency", "self_consistency-sim")  # OptiLLM's own; baseline: one call


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_ours(workdir: str, sim_url: str, name: str, prices: bool = True, env: dict | None = None) -> Proc:
    path = write_yaml(os.path.join(workdir, f"{name}.yaml"), proxy_config(sim_url, prices))
    port = free_port()
    return itsproxy(port, path, os.path.join(workdir, f"{name}.log"), env).start()


def run_ours(workdir: str, sim: Proc, budget: Budget, results: Results) -> None:
    proc = start_ours(workdir, f"http://127.0.0.1:{sim.port}", "itsproxy")
    ours = results.ours
    try:
        ours.ready_s = proc.ready_s
        time.sleep(1.0)
        ours.rss_idle_mb = proc.rss()
        for sc in SCENARIOS:
            log(f"itsproxy: {sc.label}")
            ours.rows[sc.key] = measure.scenario(proc, sim.port, sc, budget)
        log("itsproxy: vote n=8 against a slow upstream")
        results.slow = measure.slow_upstream(proc.port, sim.port, budget.slow, 200)
        served = sum(r.requests for r in ours.rows.values()) + 3 * (budget.slow + 1)
        log(f"itsproxy: soak, {budget.soak} more requests")
        results.soak = measure.soak(proc, served, budget.soak, budget.max_s * 3)
        ours.rss_after = results.soak.final
    finally:
        proc.stop()


def slow_callbacks(proc: Proc) -> int:
    text = proc.log_text()
    m = re.search(r"itsproxy loop debug: (\d+) callbacks", text)
    found = re.findall(r".*Executing .* took.*", text)
    if found:
        log("slow callbacks:\n" + "\n".join(line[:300] for line in found[:10]))
    return int(m.group(1)) if m else len(found)


def loop_check(workdir: str, sim: Proc, budget: Budget, results: Results) -> None:
    """A second proxy on asyncio's debug loop: count callbacks slower than the threshold."""
    proc = start_ours(workdir, f"http://127.0.0.1:{sim.port}", "itsproxy-loopdebug", env=LOOP_ENV)
    total = 0
    try:
        for sc in SCENARIOS:  # no warm-up on purpose: first-request work must not block the loop either
            target = measure.proxy_target(proc.port, sc)
            result = measure.run(run_load(target, budget.loop_check, 32, budget.max_s))
            total += result.count + result.errors
    finally:
        proc.stop()
    results.slow_callbacks = (results.slow_callbacks or 0) + slow_callbacks(proc)
    results.loop_requests += total
    results.threshold_ms = LOOP_DEBUG_MS


def ready_with_cost_map(workdir: str, sim: Proc, results: Results) -> None:
    """Prices from litellm's cost map: read at startup, and the first requests must not pay
    for it (they run on the debug loop too)."""
    proc = start_ours(workdir, f"http://127.0.0.1:{sim.port}", "itsproxy-costmap", prices=False, env=LOOP_ENV)
    results.ready_map_s = proc.ready_s
    try:
        for sc in SCENARIOS:
            result = measure.run(run_load(measure.proxy_target(proc.port, sc), 4, 2, 30))
            results.loop_requests += result.count + result.errors
    finally:
        proc.stop()
    results.slow_callbacks = (results.slow_callbacks or 0) + slow_callbacks(proc)


def run_peer(peer: peers.Peer, workdir: str, sim: Proc, budget: Budget) -> SystemResult:
    label = f"{peer.name} {peer.version}".strip()
    if not peer.exe:
        return SystemResult(label, status=peer.why_missing)
    start = peers.start_litellm if peer.name.startswith("LiteLLM") else peers.start_optillm
    try:
        proc = start(peer, free_port(), f"http://127.0.0.1:{sim.port}", workdir)
    except RuntimeError as exc:
        log(f"{peer.name} failed to start: {exc}")
        return SystemResult(label, status="failed to start")
    out = SystemResult(label, ready_s=proc.ready_s)
    try:
        time.sleep(1.0)
        out.rss_idle_mb = proc.rss()
        scenarios = [sc for sc in SCENARIOS if sc.key in peer.models] + ([SC] if "sc" in peer.models else [])
        for sc in scenarios:
            log(f"{peer.name}: {sc.label}")
            out.rows[sc.key] = measure.scenario(proc, sim.port, sc, budget, model=peer.models[sc.key])
        out.rss_after = (sum(r.requests for r in out.rows.values()), proc.rss())
    finally:
        proc.stop()
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (under ~2 minutes)")
    parser.add_argument("--no-peers", action="store_true", help="skip LiteLLM proxy and OptiLLM")
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = QUICK if args.quick else FULL
    workdir = tempfile.mkdtemp(prefix="itsproxy-bench-")
    started = time.monotonic()
    results = Results("quick" if args.quick else "full", SystemResult("itsproxy"), [])
    sim = simulator(free_port(), os.path.join(workdir, "simulator.log")).start()
    try:
        run_ours(workdir, sim, budget, results)
        log("itsproxy: event-loop check")
        loop_check(workdir, sim, budget, results)
        log("itsproxy: time to ready with litellm's cost map")
        ready_with_cost_map(workdir, sim, results)
        if not args.no_peers:
            for peer in (peers.litellm_peer(), peers.optillm_peer()):
                results.peers.append(run_peer(peer, workdir, sim, QUICK_PEER if args.quick else FULL_PEER))
    finally:
        sim.stop()
    table = render(results)
    print(f"itsproxy bench ({results.mode} run, {os.cpu_count()} cores, {time.monotonic() - started:.0f} s)\n")
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    log(f"work directory: {workdir}" if args.keep else "done")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
