"""Writes sums.jsonl: 60 chat questions "What is A + B?" (A, B two-digit, random.Random(0)),
the offline demo's dataset (the simulator answers them, noisily).

    python -m itsproxy.proxy.eval.datasets.make_sums > proxy/eval/datasets/sums.jsonl
"""

from __future__ import annotations

import json
import random
import sys

ROWS = 60


def main() -> int:
    rng = random.Random(0)
    for i in range(ROWS):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        row = {"id": f"sum-{i:02d}", "messages": [{"role": "user", "content": f"What is {a} + {b}?"}],
               "answer": str(a + b)}
        sys.stdout.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
