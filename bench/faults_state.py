"""The fault campaign's state part: the budgets store broken three ways, under both policies.

- a corrupt budgets SQLite file at startup: the proxy refuses to start and names the file
  (under either policy: a file that is not a database is an operator's mistake, not an outage);
- a write-locked budgets file while requests arrive (another process holds an EXCLUSIVE
  transaction): each request follows `on_state_error` within `state_timeout_s` (open: served
  unmetered, closed: 503 state_unavailable), none stalls, none is a 500;
- `server.state.backend: redis` with the real `redis-server` stopped mid-run: the same.

Each row: outcome, the statuses seen, the longest request's latency (bounded by the state
timeout, not by the store) and whether any was a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from bench.faults_capture import AsyncTeeTransport, Sink
from bench.redis_server import RedisServer
from itsproxy.proxy.cli import main as cli_main
from itsproxy.proxy.config import parse_config
from itsproxy.proxy.http.app import create_app
from itsproxy.proxy.serving import ServerHandle, embedded_config, serve_in_thread

POLICIES = ("open", "closed")
STATE_TIMEOUT_S = 0.5
BURST = 30
QUESTION = [{"role": "user", "content": "What is 17 + 25?"}]
HEADERS = ["state fault", "policy", "outcome", "statuses", "longest request", "500s"]


@dataclass
class StateRow:
    fault: str
    policy: str
    outcome: str
    statuses: str
    longest_s: float | None
    errors_500: int

    def cells(self) -> list[object]:
        longest = "-" if self.longest_s is None else f"{self.longest_s:.2f} s"
        return [self.fault, self.policy, self.outcome, self.statuses, longest, self.errors_500]


def config(models: list[dict[str, Any]], server: dict[str, Any], policy: str,
           state: dict[str, Any] | None = None) -> dict[str, Any]:
    routes = [{"name": "p", "match": {"model": "p"}, "generate": {"model": "m"}, "passthrough": True},
              {"name": "v", "match": {"model": "v"}, "generate": {"model": "m", "n": 4, "temperature": 0.8},
               "select": [{"vote": {"extract": "number"}}]}]
    srv = {**server, **({"state": state} if state else {})}
    return {"model_list": models, "routes": routes, "server": srv,
            "budgets": {"tokens_per_day": 10**12, "on_state_error": policy, "state_timeout_s": STATE_TIMEOUT_S}}


async def _burst(base_url: str, key: str, sink: Sink, count: int) -> list[tuple[str, float]]:
    """`count` requests at once, half passthrough, half vote: each one's status and latency."""
    http = httpx.AsyncClient(transport=AsyncTeeTransport(sink), timeout=30)
    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, http_client=http) as client:
        async def one(i: int) -> tuple[str, float]:
            started = time.monotonic()
            try:
                await client.chat.completions.create(model="pv"[i % 2], messages=QUESTION, max_tokens=40)
                status = "200"
            except openai.APIStatusError as exc:
                code = exc.body.get("code") if isinstance(exc.body, dict) else ""
                status = f"{exc.status_code} {code or ''}".strip()
            except openai.APIConnectionError as exc:
                status = f"CONNECTION {type(exc.__cause__).__name__}"
            return status, time.monotonic() - started
        return list(await asyncio.gather(*(one(i) for i in range(count))))


def _row(fault: str, policy: str, results: list[tuple[str, float]]) -> StateRow:
    counts: dict[str, int] = {}
    for status, _ in results:
        counts[status] = counts.get(status, 0) + 1
    want = "200" if policy == "open" else "503 state_unavailable"
    ok = set(counts) == {want}
    return StateRow(fault, policy, ("as the policy says" if ok else "NOT THE POLICY"),
                    " ".join(f"{s}×{c}" for s, c in sorted(counts.items())),
                    max(t for _, t in results), sum(c for s, c in counts.items() if s.startswith("500")))


@contextlib.contextmanager
def _proxy(cfg: dict[str, Any]) -> Iterator[ServerHandle]:
    handle = serve_in_thread(embedded_config(create_app(parse_config(cfg))))
    try:
        yield handle
    finally:
        handle.stop()


def corrupt_at_startup(make: Callable[[str, dict[str, Any] | None], dict[str, Any]], policy: str,
                       tmp: Path, sink: Sink) -> StateRow:
    """`itsproxy check-config` (what `serve` runs first) on a config whose budgets file is garbage."""
    state_dir = tmp / f"corrupt-{policy}"
    state_dir.mkdir()
    db = state_dir / "budgets.sqlite3"
    db.write_bytes(b"this is not a database, " * 200)
    cfg = make(policy, None)
    cfg["server"] = {**cfg["server"], "state_dir": str(state_dir)}
    path = state_dir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli_main(["check-config", str(path)])
        except SystemExit as exc:  # one file: `check-config` exits as `serve` would
            status = int(exc.code or 0)
    named = str(db) in err.getvalue()
    sink.add("stderr", err.getvalue())
    outcome = f"refused at startup (exit {status}), file {'named' if named else 'NOT NAMED'}"
    return StateRow("corrupt budgets file", policy, outcome, f"exit {status}", None, 0)


def locked_during_load(make: Callable[[str, dict[str, Any] | None], dict[str, Any]], policy: str, tmp: Path,
                       key: str, sink: Sink) -> StateRow:
    state_dir = tmp / f"locked-{policy}"
    state_dir.mkdir()
    cfg = make(policy, None)
    cfg["server"] = {**cfg["server"], "state_dir": str(state_dir)}
    with _proxy(cfg) as handle:
        asyncio.run(_burst(handle.base_url, key, sink, 2))  # creates the file
        lock = sqlite3.connect(state_dir / "budgets.sqlite3", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            results = asyncio.run(_burst(handle.base_url, key, sink, BURST))
        finally:
            lock.execute("ROLLBACK")
            lock.close()
    return _row("budgets file write-locked", policy, results)


def redis_stopped(make: Callable[[str, dict[str, Any] | None], dict[str, Any]], policy: str, tmp: Path,
                  key: str, sink: Sink) -> StateRow:
    server = RedisServer(tmp)
    try:
        state = {"backend": "redis", "url": server.url, "key_prefix": f"faults-{policy}:"}
        with _proxy(make(policy, state)) as handle:
            before = asyncio.run(_burst(handle.base_url, key, sink, 4))
            server.stop()
            results = asyncio.run(_burst(handle.base_url, key, sink, BURST))
    finally:
        server.stop()
    row = _row("redis stopped mid-run", policy, results)
    if any(s != "200" for s, _ in before):
        row.outcome = f"redis up: {before}"
    return row


def state_rows(make: Callable[[str, dict[str, Any] | None], dict[str, Any]], key: str, sink: Sink) -> list[StateRow]:
    """All state cases under both policies. `make(policy, state)` gives a proxy config."""
    rows: list[StateRow] = []
    with tempfile.TemporaryDirectory(prefix="its-faults-state-") as tmp_name:
        tmp = Path(tmp_name)
        for policy in POLICIES:
            rows.append(corrupt_at_startup(make, policy, tmp, sink))
        for policy in POLICIES:
            rows.append(locked_during_load(make, policy, tmp, key, sink))
        if shutil.which("redis-server"):
            for policy in POLICIES:
                (tmp / f"redis-{policy}").mkdir()
                rows.append(redis_stopped(make, policy, tmp / f"redis-{policy}", key, sink))
        else:
            rows.append(StateRow("redis stopped mid-run", "-", "SKIPPED: no redis-server", "-", None, 0))
    return rows
