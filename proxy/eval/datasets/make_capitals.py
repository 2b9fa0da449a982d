"""Writes capitals.jsonl from capitals.tsv: one few-shot completion prompt per place.

    python -m itsproxy.proxy.eval.datasets.make_capitals > proxy/eval/datasets/capitals.jsonl

Deterministic (no randomness): the table's order, the same three exemplars for every row
(none of them is asked), answers cut at the first newline by the row's `stop`.
"""

from __future__ import annotations

import json
import sys

from itsproxy.proxy.eval.capitals import rows

EXEMPLARS = (("France", "Paris"), ("Japan", "Tokyo"), ("Texas", "Austin"))
PARAMS = {"max_tokens": 12, "stop": ["\n"]}


def prompt(place: str) -> str:
    shots = "".join(f"Q: What is the capital of {p}?\nA: {c}\n" for p, c in EXEMPLARS)
    return f"{shots}Q: What is the capital of {place}?\nA:"


def slug(place: str) -> str:
    return "-".join(place.lower().replace("'", "").replace(",", "").split())


def main() -> int:
    for kind, place, accepted in rows():
        row = {"id": f"{kind}:{slug(place)}", "prompt": prompt(place), "answer": list(accepted), "params": PARAMS}
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
