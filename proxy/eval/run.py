"""`itsproxy eval`, end to end: the proxy (given, or started here), the runs, the files.

Writes into --out: results.jsonl (one line per question and (route, n), resumable),
results.md and results.json (the table), accuracy_vs_tokens.png, accuracy_vs_n.png.
The table is printed too.
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import ExitStack
from pathlib import Path

import openai

from itsproxy.proxy.config import load_config
from itsproxy.proxy.config_fields import ConfigError
from itsproxy.proxy.eval import plots
from itsproxy.proxy.eval.dataset import DatasetError, Row, load
from itsproxy.proxy.eval.grade import Grader
from itsproxy.proxy.eval.report import Summary, markdown, summarise
from itsproxy.proxy.eval.runner import Job, read_results, run_all
from itsproxy.proxy.http.app import create_app
from itsproxy.proxy.serving import embedded_config, serve_in_thread
from itsproxy.proxy.simulator import serve_in_thread as serve_simulator
from itsproxy.strategies.checkers.python_entry import PythonChecker, load_entry
from itsproxy.strategies.extract import build_extractor
from itsproxy.strategies.types import SpecError


class EvalError(Exception):
    pass


def grader_for(check: str | None, extract: str | None) -> Grader:
    try:
        checker = PythonChecker(check, load_entry(check, "--check")) if check else None
        extractor = build_extractor(extract, "--extract") if extract else None
    except SpecError as exc:
        raise EvalError(str(exc)) from None
    return Grader(extractor=extractor, checker=checker)


def start_proxy(config_path: str | None, stack: ExitStack) -> tuple[str, str]:
    """Serve the config in this process (and its simulator, if it has one): (base_url, api_key)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise EvalError(f"config error: {exc}") from None
    try:
        if config.simulator is not None:
            settings = config.simulator
            sim = serve_simulator(settings.sim, host=settings.host, port=settings.port)
            stack.callback(sim.stop)
        handle = serve_in_thread(embedded_config(create_app(config)))
    except (OSError, RuntimeError) as exc:  # a port in use, a server that would not start
        raise EvalError(f"cannot start the proxy from {config.source}: {exc}") from None
    stack.callback(handle.stop)
    keys = config.server.api_keys
    return handle.base_url, keys[0] if keys else "none"


def jobs_for(routes: list[str], ns: list[int] | None, rows: list[Row]) -> list[Job]:
    each: list[int | None] = list(ns) if ns else [None]
    return [Job(route, n, row) for route in routes for n in each for row in rows]


async def _run(args, base_url: str, api_key: str, jobs: list[Job], grader: Grader, out: Path) -> int:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=args.timeout)
    try:
        return await run_all(client, grader, jobs, out, seed=args.seed, concurrency=args.concurrency,
                             progress=not args.no_progress)
    finally:
        await client.close()


def write_report(out_dir: Path, summaries: list[Summary], title: str) -> str:
    table = markdown(summaries)
    (out_dir / "results.md").write_text(f"# {title}\n\n{table}", encoding="utf-8")
    (out_dir / "results.json").write_text(json.dumps([s.as_dict() for s in summaries], indent=1), encoding="utf-8")
    plots.accuracy_vs_tokens(summaries, out_dir / "accuracy_vs_tokens.png", f"{title}: accuracy vs compute")
    plots.accuracy_vs_n(summaries, out_dir / "accuracy_vs_n.png", f"{title}: accuracy vs n")
    return table


def main(args) -> int:
    try:
        rows = load(args.dataset, args.limit)
        grader = grader_for(args.check, args.extract)
    except (DatasetError, EvalError) as exc:
        print(f"itsproxy eval: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results.jsonl"
    jobs = jobs_for(args.routes, args.n, rows)
    with ExitStack() as stack:
        try:
            base_url, key = (args.base_url, "none") if args.base_url else start_proxy(args.config, stack)
        except EvalError as exc:
            print(f"itsproxy eval: {exc}", file=sys.stderr)
            return 2
        sent = asyncio.run(_run(args, base_url, args.api_key or key, jobs, grader, results))
    ids = {r.id for r in rows}
    records = [r for r in read_results(results) if r["id"] in ids]
    summaries = summarise(records, [(j.route, j.n) for j in jobs])
    title = f"{Path(args.dataset).stem} ({len(rows)} questions, seed {args.seed})"
    table = write_report(out_dir, summaries, title)
    print(f"{sent} requests sent ({len(jobs) - sent} resumed from {results})", file=sys.stderr)
    print(table)
    print(f"written to {out_dir}/: results.jsonl results.md results.json accuracy_vs_tokens.png accuracy_vs_n.png",
          file=sys.stderr)
    return 0
