"""`python -m bench.faults`: the fault campaign. Every simulator fault mode × (passthrough, vote
n=4) × (stream or not) through a real proxy on loopback, on both upstream backends (the lean
direct path and litellm), plus bad client bodies, checkers that try to leak their secrets, a
client that leaves, the budgets store broken (bench/faults_state.py) and a bounded load.

For each case: what the client got (status, or an error event inside a 200 stream), the status
the proxy counted in its_requests_total, and the tokens: `told` (the response's usage), `served`
(the simulator's /stats: what was really generated and sent), `charged` (what the key's budget
was charged, from the budgets database), `flagged` (the access log said `estimated`) and
`lost = served - max(told, charged)`: tokens the upstream served that nobody paid for (must be
<= 0; such a row is marked `!`).

The config carries recognizable secrets; everything the proxy emits is captured
(bench/faults_capture.py) and searched for them: the command fails unless "secrets found: 0".
The simulator and the proxy run in this process, each on its own thread and event loop, on real
loopback HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai

from bench.faults_capture import AsyncTeeTransport, EchoingVerifier, Sink, TeeTransport, found, proxy_output
from bench.faults_state import HEADERS as STATE_HEADERS
from bench.faults_state import config as state_proxy_config
from bench.faults_state import state_rows
from bench.faults_table import HEADERS, Row, combined
from bench.table import markdown
from itsproxy.proxy.config import parse_config
from itsproxy.proxy.http.app import create_app
from itsproxy.proxy.serving import ServerHandle, embedded_config, serve_in_thread
from itsproxy.proxy.simulator import SimConfig
from itsproxy.proxy.simulator import serve_in_thread as serve_simulator

SECRET = "sk-campaign-upstream-secret-93c1"  # the upstream key (model api_key)
SERVER_KEY = "sk-campaign-server-key-5e2a"  # server.api_keys: the clients' key
VERIFIER_TOKEN = "sk-campaign-verifier-7d4f"  # an http checker's header, via os.environ/
CHECK_TOKEN = "sk-campaign-check-env-2b8e"  # a command checker's env, via os.environ/
SECRETS = (SECRET, SERVER_KEY, VERIFIER_TOKEN, CHECK_TOKEN)
ENV = {"ITS_CAMPAIGN_VERIFIER": f"Bearer {VERIFIER_TOKEN}", "ITS_CAMPAIGN_CHECK": CHECK_TOKEN}
FAULTS = ["none", "fail_rate=1@fail_status=500", "fail_rate=1@fail_status=503",
          "fail_rate=1@fail_status=429@retry_after_s=7", "refuse", "reset_mid_body", "truncate_stream",
          "no_done", "malformed_chunk", "sse_multiline", "sse_comments", "crlf", "json_to_stream",
          "html_reply", "bad_usage=negative", "bad_usage=string", "bad_usage=list", "bad_usage=missing",
          "no_usage", "bad_choices", "object_content", "max_n=2", "trickle_ms=2", "huge_body_mb=2",
          "echo_key", "latency_ms=300", "hang"]
BACKENDS = {"lean": "auto", "litellm": "litellm"}
SURFACES = ("passthrough", "vote")
TIMEOUT_S = 3  # every route's deadline: a hanging upstream is a 504 after this
RESERVE_CAP = 256  # budgets.reserve_completion_tokens: what a call of unknown output length is charged
LOAD_LATENCY_MS = 2000
DISCONNECT_UPSTREAM = "latency_ms=300"  # the client leaves at 0.2 s, before any answer
QUESTION = [{"role": "user", "content": "What is 17 + 25?"}]
DEEP = b'{"model": "M", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
BAD_INPUTS: list[tuple[str, bytes]] = [
    ("invalid JSON", b'{"model": "M", "messages": ['),
    ("JSON 100k deep", DEEP),
    ("role as a list", b'{"model": "M", "messages": [{"role": ["user"], "content": "x"}]}'),
    ("its.n null", b'{"model": "M", "messages": [{"role": "user", "content": "x"}], "its": {"n": null}}'),
    ("name: 7", b'{"model": "M", "messages": [{"role": "user", "content": "x", "name": 7}]}'),
    ("text part 7", b'{"model": "M", "messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}]}'),
    ("junk tool_calls", b'{"model": "M", "messages": [{"role": "assistant", "tool_calls": [1]}]}'),
    ("api_base", b'{"model": "M", "messages": [{"role": "user", "content": "x"}], "api_base": "http://x"}'),
]
# A command checker that prints the token it was given: its critique carries the secret.
LEAKY_CHECK = ["python3", "-c", "import os, sys; sys.stdin.read(); "
               "print('my token is', os.environ['CHECK_TOKEN']); sys.exit(1)"]


def route_names(i: int) -> dict[str, str]:
    return {"passthrough": f"pass{i}", "vote": f"vote{i}"}


def model(name: str, sim_url: str, opts: str) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": f"openai/{opts}", "api_base": f"{sim_url}/v1",
                                                   "api_key": SECRET}}


def config(sim_url: str, faults: Sequence[str], backend: str, state_dir: str, verifier_url: str,
           load_n: int) -> dict[str, Any]:
    models, routes = [], []
    # After the faults: the disconnects' upstream (unless a fault is it already), then the load's.
    extra = [] if DISCONNECT_UPSTREAM in faults else [DISCONNECT_UPSTREAM]
    for i, fault in enumerate([*faults, *extra, f"latency_ms={LOAD_LATENCY_MS}"]):
        models.append(model(f"m{i}", sim_url, "sim" if fault == "none" else f"sim@{fault}"))
        names = route_names(i)
        routes.append({"name": names["passthrough"], "match": {"model": names["passthrough"]},
                       "generate": {"model": f"m{i}"}, "passthrough": True, "limits": {"timeout_s": TIMEOUT_S}})
        routes.append({"name": names["vote"], "match": {"model": names["vote"]},
                       "generate": {"model": f"m{i}", "n": 4, "temperature": 0.8},
                       "select": [{"vote": {"extract": "number"}}], "limits": {"timeout_s": TIMEOUT_S, "max_n": 8}})
    routes[-1]["limits"]["timeout_s"] = 60  # the load's route: queueing is not a fault
    checks = {"checkenv": {"command": LEAKY_CHECK, "env": {"CHECK_TOKEN": "os.environ/ITS_CAMPAIGN_CHECK"}},
              "verifier": {"http": {"url": verifier_url,
                                    "headers": {"Authorization": "os.environ/ITS_CAMPAIGN_VERIFIER"}}}}
    for name, check in checks.items():
        routes.append({"name": name, "match": {"model": name}, "generate": {"model": "m0", "n": 2},
                       "select": [{"check": check}], "on_unverified": "best_effort"})
    return {"model_list": models, "routes": routes, "traces": {"path": os.path.join(state_dir, "traces.jsonl")},
            "server": {"api_keys": [SERVER_KEY], "state_dir": state_dir, "upstream_client": backend,
                       "max_upstream_concurrency": max(256, load_n * 8)},
            "budgets": {"tokens_per_day": 10**12, "reserve_completion_tokens": RESERVE_CAP, "state_timeout_s": 5.0}}


class AccessLines(logging.Handler):
    """The access log's JSON lines, kept for the `flagged` column (they also go to stderr)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


class Campaign:
    """A simulator and a proxy configured with one passthrough and one vote route per fault."""

    def __init__(self, faults: Sequence[str] = FAULTS, backend: str = "lean", sink: Sink | None = None,
                 load_n: int = 0) -> None:
        self.faults, self.backend, self.sink = list(faults), backend, sink or Sink()
        os.environ.update(ENV)
        self.tmp = tempfile.TemporaryDirectory(prefix="its-faults-")
        self.db = Path(self.tmp.name) / "budgets.sqlite3"
        self.sim = serve_simulator(SimConfig(seed=11))
        self.verifier = EchoingVerifier()
        self.access = AccessLines()
        self._access_level = logging.getLogger("itsproxy.access").level
        logging.getLogger("itsproxy.access").addHandler(self.access)
        logging.getLogger("itsproxy.access").setLevel(logging.INFO)  # the `flagged` column reads it
        cfg = config(self.sim.url, self.faults, BACKENDS[backend], self.tmp.name, self.verifier.url, load_n)
        self.proxy: ServerHandle = serve_in_thread(embedded_config(create_app(parse_config(cfg))))
        self.client = openai.OpenAI(base_url=self.proxy.base_url, api_key=SERVER_KEY, max_retries=0, timeout=30,
                                    http_client=httpx.Client(transport=TeeTransport(self.sink), timeout=30))
        self.http = httpx.Client(base_url=self.proxy.url, timeout=30, transport=TeeTransport(self.sink),
                                 headers={"authorization": f"Bearer {SERVER_KEY}"})

    def close(self) -> None:
        """Scrape /metrics and read the trace file into the sink, then stop everything."""
        self.sink.add("metrics", self.http.get("/metrics").text)
        self.proxy.app.state.services.trace_hook.flush()
        traces = Path(self.tmp.name) / "traces.jsonl"
        self.sink.add("traces", traces.read_text() if traces.exists() else "")
        logging.getLogger("itsproxy.access").removeHandler(self.access)
        logging.getLogger("itsproxy.access").setLevel(self._access_level)
        self.client.close()
        self.http.close()
        self.proxy.stop()
        self.sim.stop()
        self.verifier.stop()
        self.tmp.cleanup()

    # -- what the proxy counted, charged and flagged, and the simulator served --------------------

    def counts(self) -> dict[tuple[str, str], float]:
        """its_requests_total by (route, status)."""
        out: dict[tuple[str, str], float] = {}
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith("its_requests_total{"):
                labels, value = line[line.index("{") + 1:line.rindex("}")], float(line.rsplit(" ", 1)[1])
                fields = dict(part.split("=", 1) for part in labels.split('",') if "=" in part)
                key = (fields["route"].strip('"'), fields["status"].strip('"'))
                out[key] = out.get(key, 0.0) + value
        return out

    def budget(self) -> tuple[int, int]:
        """(charged, still reserved) over all keys and days in the budgets database."""
        if not self.db.exists():
            return 0, 0
        with sqlite3.connect(self.db) as db:
            charged, reserved = db.execute("SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(reserved), 0) "
                                           "FROM spend").fetchone()
        return int(charged), int(reserved)

    def served(self) -> int:
        return int(httpx.get(f"{self.sim.url}/stats").json().get("total_tokens", 0))

    def measure(self, route: str, send: Callable[[], tuple[str, int]]) -> tuple[str, int, str, int, int, bool]:
        """Run `send()` (returns outcome, told); then what the proxy counted, charged and flagged for it,
        and what the simulator served meanwhile."""
        before, served0, (charged0, _), lines0 = self.counts(), self.served(), self.budget(), len(self.access.lines)
        outcome, told = send()
        after = before
        for _ in range(100):  # a stream settles when it closes: wait for the count and the charge (5 s)
            after = self.counts()
            if any(k[0] == route and v > before.get(k, 0) for k, v in after.items()) and self.budget()[1] == 0:
                break
            time.sleep(0.05)
        counted = ",".join(k[1] for k, v in after.items() if k[0] == route and v > before.get(k, 0)) or "none"
        time.sleep(0.05)  # the simulator bills as its reply ends
        flagged = any(line.get("estimated") for line in self.access.lines[lines0:])
        return outcome, told, counted, self.budget()[0] - charged0, self.served() - served0, flagged

    def _checked(self, text: str, outcome: str) -> str:
        return f"LEAK {outcome}" if found(text, SECRETS) else outcome

    # -- the cases --------------------------------------------------------------------------------

    def ask(self, model: str, stream: bool) -> tuple[str, int]:
        try:
            if not stream:
                r = self.client.chat.completions.create(model=model, messages=QUESTION, seed=1)
                return self._checked(r.model_dump_json(), "200"), r.usage.total_tokens if r.usage else 0
            told, text = 0, ""
            events = self.client.chat.completions.create(model=model, messages=QUESTION, seed=1, stream=True,
                                                         stream_options={"include_usage": True})
            for chunk in events:
                text += chunk.model_dump_json()
                told = chunk.usage.total_tokens if chunk.usage else told
            return self._checked(text, "200"), told
        except openai.APIStatusError as exc:
            code = (exc.body or {}).get("code") if isinstance(exc.body, dict) else None
            return self._checked(exc.response.text, f"{exc.status_code} {code or ''}".strip()), 0
        except openai.APIConnectionError as exc:
            return f"CONNECTION {type(exc.__cause__).__name__}", 0
        except openai.APIError as exc:  # an error event inside a 200 stream
            code = (exc.body or {}).get("code") if isinstance(exc.body, dict) else None
            return self._checked(str(exc.body), f"200+error {code or exc.message[:30]}"), 0

    def row(self, case: str, surface: str, stream: bool | str, route: str,
            send: Callable[[], tuple[str, int]]) -> Row:
        outcome, told, counted, charged, served, flagged = self.measure(route, send)
        return Row(case, surface, stream, outcome, counted, told, served, charged, flagged)

    def fault_rows(self) -> list[Row]:
        return [self.row(fault, surface, stream, route, functools.partial(self.ask, route, stream))
                for i, fault in enumerate(self.faults) for surface, route in route_names(i).items()
                for stream in (False, True)]

    def checker_rows(self) -> list[Row]:
        """Checkers whose critique carries their secret: a command printing its env, a verifier
        echoing its Authorization header. The critique reaches the client (its.evidence) and traces."""
        rows = []
        for route in ("checkenv", "verifier"):
            def send(route: str = route) -> tuple[str, int]:
                r = self.http.post("/v1/chat/completions", json={"model": route, "messages": QUESTION})
                verified = r.headers.get("x-its-verified", "-")
                return self._checked(r.text, f"{r.status_code} verified={verified}"), \
                    (r.json().get("usage") or {}).get("total_tokens", 0) if r.status_code == 200 else 0
            rows.append(self.row(f"checker {route} echoes its secret", "check", "no", route, send))
        return rows

    def bad_input_rows(self) -> list[Row]:
        rows = []
        for name, raw in BAD_INPUTS:
            for surface, route in route_names(0).items():
                body = raw.replace(b'"M"', f'"{route}"'.encode())

                def send(body: bytes = body) -> tuple[str, int]:
                    r = self.http.post("/v1/chat/completions", content=body,
                                       headers={"content-type": "application/json"})
                    return self._checked(r.text, f"{r.status_code} {r.json()['error'].get('code') or ''}".strip()), 0

                rows.append(self.row(name, surface, "no", "(unrouted)", send))
        return rows

    def disconnect_rows(self) -> list[Row]:
        """The client leaves 0.2 s into a 300 ms-per-call upstream, before any answer."""
        i = self.faults.index(DISCONNECT_UPSTREAM) if DISCONNECT_UPSTREAM in self.faults else len(self.faults)
        rows = []
        for surface, route in route_names(i).items():
            for stream in (False, True):
                def send(route: str = route, stream: bool = stream) -> tuple[str, int]:
                    body = {"model": route, "messages": QUESTION, "stream": stream}
                    try:
                        with self.http.stream("POST", "/v1/chat/completions", json=body, timeout=0.2):
                            pass
                    except httpx.TimeoutException:
                        pass
                    time.sleep(0.5)  # let the upstream call end (or be cancelled)
                    return "client left at 0.2 s", 0

                rows.append(self.row("client disconnect", surface, stream, route, send))
        return rows

    def load(self, requests: int = 200, n: int = 8) -> tuple[Row, str]:
        """`requests` concurrent vote n=`n` requests against a LOAD_LATENCY_MS upstream."""
        route = route_names(len(self.faults) + (DISCONNECT_UPSTREAM not in self.faults))["vote"]

        async def one(client: openai.AsyncOpenAI) -> tuple[int, int, float]:
            started = time.monotonic()
            try:
                r = await client.chat.completions.create(model=route, messages=QUESTION, extra_body={"its": {"n": n}})
                return 200, r.usage.total_tokens if r.usage else 0, time.monotonic() - started
            except openai.APIStatusError as exc:
                return exc.status_code, 0, time.monotonic() - started

        async def all_of_them() -> list[tuple[int, int, float]]:
            pool = httpx.AsyncClient(transport=AsyncTeeTransport(self.sink, limits=_limits(requests)), timeout=120)
            async with openai.AsyncOpenAI(base_url=self.proxy.base_url, api_key=SERVER_KEY, max_retries=0,
                                          http_client=pool) as client:
                return await asyncio.gather(*(one(client) for _ in range(requests)))

        results: list[tuple[int, int, float]] = []

        def send() -> tuple[str, int]:
            results.extend(asyncio.run(all_of_them()))
            statuses: dict[int, int] = {}
            for status, _, _ in results:
                statuses[status] = statuses.get(status, 0) + 1
            return " ".join(f"{s}×{c}" for s, c in sorted(statuses.items())), sum(t for _, t, _ in results)

        started = time.monotonic()
        row = self.row("load", "vote", "no", route, send)
        wall = time.monotonic() - started
        times = sorted(t for _, _, t in results)
        p50, p99 = times[len(times) // 2], times[max(0, int(len(times) * 0.99) - 1)]
        summary = (f"{requests} concurrent vote n={n} requests against a {LOAD_LATENCY_MS} ms upstream: "
                   f"wall {wall:.1f} s, p50 {p50:.2f} s, p99 {p99:.2f} s")
        return row, summary


def _limits(size: int) -> httpx.Limits:
    return httpx.Limits(max_connections=size, max_keepalive_connections=size)


def state_config(sim_url: str) -> Callable[[str, dict[str, Any] | None], dict[str, Any]]:
    """Proxy configs for the state part: the campaign's secrets, a budget, the given policy."""
    def make(policy: str, state: dict[str, Any] | None) -> dict[str, Any]:
        return state_proxy_config([model("m", sim_url, "sim")], {"api_keys": [SERVER_KEY]}, policy, state)
    return make


def run(faults: Sequence[str], backends: Sequence[str], load: int, state: bool, sink: Sink) -> dict[str, Any]:
    """The whole campaign: the tables' rows by part."""
    out: dict[str, Any] = {"summary": ""}
    for backend in backends:
        campaign = Campaign(faults, backend, sink, load_n=load if backend == backends[0] else 0)
        try:
            rows = campaign.fault_rows()
            if backend == backends[0]:
                rows += campaign.checker_rows() + campaign.bad_input_rows()
            rows += campaign.disconnect_rows()
            if load and backend == backends[0]:
                row, out["summary"] = campaign.load(load)
                rows.append(row)
            out[backend] = rows
        finally:
            campaign.close()
    if state:
        sim = serve_simulator(SimConfig(seed=11))
        try:
            out["state"] = state_rows(state_config(sim.url), SERVER_KEY, sink)
        finally:
            sim.stop()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults", nargs="*", help="a subset of the fault modes (default: all)")
    ap.add_argument("--backends", nargs="*", choices=list(BACKENDS), default=list(BACKENDS))
    ap.add_argument("--load", type=int, default=1000, help="concurrent requests in the load case (0: none)")
    ap.add_argument("--no-state", action="store_true", help="skip the budgets-store part")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    started = time.monotonic()
    sink = Sink()
    with proxy_output(sink):
        out = run(args.faults or FAULTS, args.backends, args.load, not args.no_state, sink)
    rows: list[Row] = [r for b in args.backends for r in out[b]]
    if len(args.backends) == 2:
        print(combined(out[args.backends[0]], out[args.backends[1]], args.backends))
    else:
        print(markdown(HEADERS, [r.cells() for r in out[args.backends[0]]]))
    if out.get("state"):
        print("\n" + markdown(STATE_HEADERS, [r.cells() for r in out["state"]]))
    if out["summary"]:
        print(f"\n{out['summary']}")
    leaked = found(sink.text(), SECRETS)
    errors = sum(r.outcome.startswith("500") for r in rows) + sum(r.errors_500 for r in out.get("state", []))
    print(f"\ncampaign took {time.monotonic() - started:.0f} s; rows with lost > 0: {sum(r.lost > 0 for r in rows)}; "
          f"500s: {errors}; captured {len(sink.text()):,} characters; secrets found: {len(leaked)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({b: [dict(zip(HEADERS, r.cells())) for r in out[b]] for b in args.backends}, f, indent=1)
    return 1 if leaked or errors or any(r.lost > 0 for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
