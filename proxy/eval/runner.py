"""Sending every (route, n, row) through the proxy with the official `openai` client.

One JSONL line per answered request, appended as it finishes, so an interrupted
run resumes where it stopped: a (route, n, id) already answered without an error
is not sent again. Each row has its own seed (derived from --seed and the row id,
the same for every route and n), so runs and routes are comparable.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
from tqdm import tqdm

from itsproxy.proxy.eval.dataset import Row
from itsproxy.proxy.eval.grade import Grader


@dataclass(frozen=True)
class Job:
    route: str
    n: int | None  # None: the route's own n (no its.n sent)
    row: Row


def row_seed(seed: int, row_id: str) -> int:
    return zlib.crc32(f"{seed}:{row_id}".encode()) & 0x7FFFFFFF


def key(route: str, n: int | None, row_id: str) -> tuple[str, int | None, str]:
    return (route, n, row_id)


def read_results(path: Path) -> list[dict[str, Any]]:
    """The lines written so far; the last line per (route, n, id) wins; a torn last line is dropped."""
    if not path.exists():
        return []
    latest: dict[tuple, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by an interruption
        latest[key(rec["route"], rec["n"], rec["id"])] = rec
    return list(latest.values())


def _usage(resp: dict[str, Any]) -> tuple[int | None, int | None, bool]:
    """(prompt, completion, estimated): every token the request spent (`its.usage.total` when present)."""
    its_usage = (resp.get("its") or {}).get("usage") or {}
    usage = its_usage.get("total") or resp.get("usage") or {}
    return usage.get("prompt_tokens"), usage.get("completion_tokens"), bool(its_usage.get("estimated"))


def _text(resp: dict[str, Any]) -> str:
    choice = (resp.get("choices") or [{}])[0]
    if "text" in choice:
        return choice.get("text") or ""
    return ((choice.get("message") or {}).get("content")) or ""


async def _send(client: openai.AsyncOpenAI, job: Job, seed: int) -> dict[str, Any]:
    extra = {"its": {"n": job.n}} if job.n is not None else None
    row = job.row
    if row.prompt is not None:
        r = await client.completions.create(model=job.route, prompt=row.prompt, seed=seed, extra_body=extra,
                                            **row.params)
    else:
        r = await client.chat.completions.create(model=job.route, messages=list(row.messages or ()),  # type: ignore[arg-type]
                                                 seed=seed,
                                                 extra_body=extra, **row.params)
    return r.model_dump()


async def run_one(client: openai.AsyncOpenAI, grader: Grader, job: Job, seed: int) -> dict[str, Any]:
    rec: dict[str, Any] = {"route": job.route, "n": job.n, "id": job.row.id, "seed": row_seed(seed, job.row.id)}
    start = time.perf_counter()
    try:
        resp = await _send(client, job, rec["seed"])
    except openai.APIStatusError as exc:
        rec.update(error=f"HTTP {exc.status_code}: {exc.message}"[:300], correct=False,
                   latency_s=round(time.perf_counter() - start, 4))
        return rec
    except openai.APIError as exc:
        rec.update(error=f"{type(exc).__name__}: {exc}"[:300], correct=False,
                   latency_s=round(time.perf_counter() - start, 4))
        return rec
    rec["latency_s"] = round(time.perf_counter() - start, 4)
    its = resp.get("its") if isinstance(resp.get("its"), dict) else None
    prompt, completion, estimated = _usage(resp)
    rec.update(error=None, text=_text(resp), prompt_tokens=prompt, completion_tokens=completion,
               estimated=estimated, candidates=(its or {}).get("candidates", 1),
               cost_usd=((its or {}).get("usage") or {}).get("cost_usd"), verified=(its or {}).get("verified"))
    rec.update(await grader.grade(job.row, rec["text"], its))
    return rec


async def run_all(client: openai.AsyncOpenAI, grader: Grader, jobs: list[Job], out: Path, *,
                  seed: int, concurrency: int, progress: bool = True) -> int:
    """Run the jobs not yet answered in `out`; returns how many were sent."""
    done = {key(r["route"], r["n"], r["id"]) for r in read_results(out) if r.get("error") is None}
    todo = [j for j in jobs if key(j.route, j.n, j.row.id) not in done]
    sem = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="eval", unit="req", disable=not progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as fh:

        async def one(job: Job) -> None:
            async with sem:
                rec = await run_one(client, grader, job, seed)
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            bar.set_postfix_str(f"{job.route} n={job.n}", refresh=False)
            bar.update()

        await asyncio.gather(*(one(j) for j in todo))
    bar.close()
    return len(todo)
