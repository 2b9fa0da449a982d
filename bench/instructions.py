"""Instructions per request, counted by callgrind: the proxy's cost as an exact figure.

    python -m bench.instructions [--other PATH] [--requests N] [--scenario KEY ...]

`python -m bench` reads CPU time, which a busy 2-core machine smears by ±30% from one run
to the next: too coarse to say whether a change made the proxy cheaper or dearer by a few
percent. Valgrind's callgrind counts the instructions the proxy process executes instead,
which does not depend on what else the machine is doing (run to run: within 0.1%).

Each proxy runs under `valgrind --tool=callgrind --instr-atstart=no` (startup is not
counted); per scenario it gets a warm-up, then counting is switched on for exactly N
requests at concurrency 8 and off again (`callgrind_control -i on|off`). The simulator and
the load driver run natively. `--other PATH` measures a second checkout the same way (an
older commit: `git worktree add /tmp/old <rev>` and a venv at `/tmp/old/.venv` with the
project installed), each proxy with its own checkout's `bench.scenarios` config, and prints
the ratio. Needs valgrind (`apt-get install valgrind`); the proxy runs ~50x slower under it.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench import measure
from bench.load import run_load
from bench.procs import ROOT, Proc, free_port, simulator
from bench.scenarios import SCENARIOS


def write_config(checkout: str, path: str, sim_url: str) -> None:
    """The checkout's own bench config (config keys and module paths change between commits)."""
    code = f"from bench.scenarios import proxy_config, write_yaml; write_yaml({path!r}, proxy_config({sim_url!r}))"
    subprocess.run([os.path.join(checkout, ".venv/bin/python"), "-c", code], cwd=checkout, check=True)


def start(checkout: str, work: str, name: str, sim_url: str) -> tuple[Proc, str]:
    cfg, out, port = os.path.join(work, f"{name}.yaml"), os.path.join(work, f"{name}.callgrind"), free_port()
    write_config(checkout, cfg, sim_url)
    python = os.path.join(checkout, ".venv/bin/python")
    cmd = (f"cd {checkout} && exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file={out} "
           f"{python} -m proxy serve --config {cfg} --host 127.0.0.1 --port {port}")
    proc = Proc(name, ["sh", "-c", cmd], port, log_path=os.path.join(work, f"{name}.log"))
    return proc.start(timeout=600), out


def counted(pid: int, out: str, label: str) -> int:
    """Dump the counts since the last zeroing and read the dump's total Ir."""
    before = set(glob.glob(out + ".*"))
    subprocess.run(["callgrind_control", "-d", label, str(pid)], check=True, capture_output=True)
    for _ in range(600):  # the dump is written by the running proxy, soon after the request returns
        for path in set(glob.glob(out + ".*")) - before:
            with open(path) as f:
                totals = [int(line.split()[1]) for line in f if line.startswith("totals:")]  # the file's last line
            if totals:
                subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
                return totals[0]
        time.sleep(0.1)
    raise SystemExit(f"no callgrind dump from pid {pid} after 60 s")


def measure_checkout(checkout: str, name: str, work: str, sim_url: str, keys: list[str],
                     requests: int) -> dict[str, float]:
    proc, out = start(checkout, work, name, sim_url)
    per_request: dict[str, float] = {}
    try:
        for sc in (s for s in SCENARIOS if s.key in keys):
            target = measure.proxy_target(proc.port, sc)
            measure.run(run_load(target, 60, 4, 300))  # warm: imports, pools, caches
            subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
            result = measure.run(run_load(target, requests, 8, 900))
            subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
            if result.errors:  # under valgrind the proxy is ~50x slower: a rare upstream hiccup is counted
                print(f"[{name}] {sc.label}: {result.errors} of {requests} failed: {result.sample_error}",
                      file=sys.stderr)
            per_request[sc.key] = counted(proc.pid, out, sc.key) / (result.count + result.errors)
            print(f"[{name}] {sc.label}: {per_request[sc.key] / 1e6:.3f} M instructions/request", file=sys.stderr)
    finally:
        proc.stop()
    return per_request


def table(ours: dict[str, float], other: dict[str, float] | None) -> str:
    head = "| scenario | this checkout, M instr/req |" + (" other, M instr/req | this ÷ other |" if other else "")
    rows = [head, "|---" * (2 + (2 if other else 0)) + "|"]
    for sc in (s for s in SCENARIOS if s.key in ours):
        row = f"| {sc.label} | {ours[sc.key] / 1e6:.3f} |"
        if other:
            row += f" {other[sc.key] / 1e6:.3f} | {ours[sc.key] / other[sc.key]:.3f} |"
        rows.append(row)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    keys = [s.key for s in SCENARIOS if s.key in ("pass", "pass-stream", "vote", "vote-fan", "check")]
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument("--other", help="another checkout (with its own .venv) to compare against")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--scenario", action="append", choices=keys, help="repeatable; default: all")
    args = parser.parse_args(argv)
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="itsproxy-instructions-")
    sim = simulator(free_port(), os.path.join(work, "sim.log")).start()
    try:
        url = f"http://127.0.0.1:{sim.port}"
        chosen = args.scenario or keys
        ours = measure_checkout(ROOT, "this", work, url, chosen, args.requests)
        other = measure_checkout(os.path.abspath(args.other), "other", work, url, chosen, args.requests) \
            if args.other else None
    finally:
        sim.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(table(ours, other))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
