"""`itsproxy eval`: the argument parser only (cheap to import; `itsproxy serve` builds it too).

The work is in itsproxy.proxy.eval.run, imported when the command runs, because it
needs the `eval` extra (matplotlib, tqdm): `pip install -e ".[eval]"`.
"""

from __future__ import annotations

import argparse
import importlib
import sys


def _n_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--n must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--n values must be >= 1, got {text!r}")
    return values


def _routes(text: str) -> list[str]:
    routes = [r.strip() for r in text.split(",") if r.strip()]
    if not routes:
        raise argparse.ArgumentTypeError("--routes needs at least one route alias")
    return routes


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def cmd_eval(args) -> int:
    try:
        run = importlib.import_module("itsproxy.proxy.eval.run")
    except ImportError as exc:
        print(f"itsproxy eval needs the 'eval' extra (pip install 'itsproxy[eval]'): {exc}", file=sys.stderr)
        return 2
    return run.main(args)


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="accuracy vs compute of routes over a dataset, through the proxy")
    p.add_argument("--dataset", required=True, help="JSONL file, or a packaged dataset name (capitals)")
    p.add_argument("--routes", required=True, type=_routes, help="comma-separated route aliases (model names)")
    p.add_argument("--n", type=_n_list, default=None, help="comma-separated n values sent as its.n "
                   "(default: each route's own n)")
    p.add_argument("--config", default=None, help="config.yaml: start this proxy in-process "
                   "(default: the packaged demo) unless --base-url is given")
    p.add_argument("--base-url", default=None, help="a running proxy's /v1 URL")
    p.add_argument("--api-key", default=None, help="the proxy's key (default: the config's first server key)")
    p.add_argument("--concurrency", type=_positive, default=4)
    p.add_argument("--limit", type=_positive, default=None, help="only the first M rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eval-out", help="output directory (results.jsonl there is resumed)")
    p.add_argument("--check", default=None, help="grade with a checker 'pkg.module:function' instead of the "
                   "reference answers")
    p.add_argument("--extract", default=None, help="extractor for responses without an extracted answer "
                   "(number, boxed, exact, ...; default: the first line)")
    p.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)
