"""Where the proxy's CPU goes, per scenario: py-spy samples the proxy process under load.

    python -m bench.profile [--scenario pass|pass-stream|vote|vote-fan|check] [--requests N]

py-spy is not a project dependency (`pip install py-spy`). Prints the functions
with the most samples, inclusive and self (collapsed stacks, native frames off).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile

from bench import measure
from bench.load import run_load
from bench.procs import free_port, itsproxy, simulator
from bench.scenarios import SCENARIOS, proxy_config, write_yaml


def top(collapsed: str, limit: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")").split(":")[0]
                  for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        own[frames[-1]] += n
    out = [f"{total} samples", "", "inclusive %  function"]
    out += [f"{100 * n / total:10.1f}  {f}" for f, n in inclusive.most_common(limit)]
    out += ["", "self %      function"]
    out += [f"{100 * n / total:10.1f}  {f}" for f, n in own.most_common(limit)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--scenario", default="pass", choices=[s.key for s in SCENARIOS])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.access(spy, os.X_OK):
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    sc = next(s for s in SCENARIOS if s.key == args.scenario)
    work = tempfile.mkdtemp(prefix="itsproxy-profile-")
    sim = simulator(free_port(), os.path.join(work, "sim.log")).start()
    try:
        cfg = write_yaml(os.path.join(work, "proxy.yaml"), proxy_config(f"http://127.0.0.1:{sim.port}"))
        proc = itsproxy(free_port(), cfg, os.path.join(work, "proxy.log")).start()
        try:
            target = measure.proxy_target(proc.port, sc)
            measure.warm(target, 100)
            out = os.path.join(work, "stacks.txt")
            rec = subprocess.Popen([spy, "record", "--pid", str(proc.pid), "--rate", "500", "--format", "raw",
                                    "--output", out, "--nonblocking"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            result = measure.run(run_load(target, args.requests, 32, 120))
            rec.send_signal(2)
            rec.wait(30)
            print(f"{sc.label}: {result.count} requests, {result.rps:.0f} req/s, {result.errors} errors")
            with open(out) as f:
                print(top(f.read(), args.top))
        finally:
            proc.stop()
    finally:
        sim.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
