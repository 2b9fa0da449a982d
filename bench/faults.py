"""`python -m bench.faults`: the fault campaign. Every simulator fault mode × (passthrough, vote
n=4) × (stream or not) through a real proxy on loopback, plus bad client bodies, a client that
leaves, and a bounded load; one markdown table per part.

For each case: what the client got (status, or an error event inside a 200 stream), the status
the proxy counted in its_requests_total, and the tokens: `told` (the response's usage), `est`
(what the proxy metered beyond what it told: estimated or unreported), `served` (the simulator's
/stats: what was really generated and sent) and `lost = served - told - est`, tokens the upstream
served that nobody accounted for (should be 0; negative would be an overcharge).

The simulator and the proxy run in this process, each on its own thread and event loop, on real
loopback HTTP. The whole campaign takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from bench.table import markdown
from itsproxy.proxy.config import parse_config
from itsproxy.proxy.http.app import create_app
from itsproxy.proxy.serving import ServerHandle, embedded_config, serve_in_thread
from itsproxy.proxy.simulator import SimConfig
from itsproxy.proxy.simulator import serve_in_thread as serve_simulator

SECRET = "sk-campaign-upstream-secret-93c1"  # the upstream key: must appear in no answer
FAULTS = ["none", "fail_rate=1@fail_status=500", "fail_rate=1@fail_status=503",
          "fail_rate=1@fail_status=429@retry_after_s=7", "refuse", "reset_mid_body", "truncate_stream",
          "no_done", "malformed_chunk", "sse_multiline", "sse_comments", "crlf", "json_to_stream",
          "html_reply", "bad_usage=negative", "bad_usage=string", "bad_usage=list", "bad_usage=missing",
          "no_usage", "bad_choices", "object_content", "max_n=2", "trickle_ms=2", "huge_body_mb=2",
          "latency_ms=300", "hang"]
SURFACES = ("passthrough", "vote")
TIMEOUT_S = 3  # every route's deadline: a hanging upstream is a 504 after this
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


def route_names(i: int) -> dict[str, str]:
    return {"passthrough": f"pass{i}", "vote": f"vote{i}"}


def config(sim_url: str, faults: Sequence[str]) -> dict[str, Any]:
    models, routes = [], []
    for i, fault in enumerate([*faults, "latency_ms=500"]):  # the last one: the load's upstream
        opts = "sim" if fault == "none" else f"sim@{fault}"
        models.append({"model_name": f"m{i}", "litellm_params": {"model": f"openai/{opts}",
                                                                 "api_base": f"{sim_url}/v1", "api_key": SECRET}})
        names = route_names(i)
        routes.append({"name": names["passthrough"], "match": {"model": names["passthrough"]},
                       "generate": {"model": f"m{i}"}, "passthrough": True, "limits": {"timeout_s": TIMEOUT_S}})
        routes.append({"name": names["vote"], "match": {"model": names["vote"]},
                       "generate": {"model": f"m{i}", "n": 4, "temperature": 0.8},
                       "select": [{"vote": {"extract": "number"}}], "limits": {"timeout_s": TIMEOUT_S, "max_n": 8}})
    return {"model_list": models, "routes": routes}


@dataclass
class Row:
    case: str
    surface: str
    stream: bool | str
    outcome: str
    counted: str
    told: int
    est: int
    served: int

    @property
    def lost(self) -> int:
        return self.served - self.told - self.est

    def cells(self) -> list[object]:
        stream = self.stream if isinstance(self.stream, str) else ("yes" if self.stream else "no")
        return [self.case, self.surface, stream, self.outcome, self.counted, self.told, self.est, self.served,
                self.lost]


HEADERS = ["fault", "surface", "stream", "outcome", "counted", "told", "est", "served", "lost"]


class Campaign:
    """A simulator and a proxy configured with one passthrough and one vote route per fault."""

    def __init__(self, faults: Sequence[str] = FAULTS) -> None:
        self.faults = list(faults)
        self.sim = serve_simulator(SimConfig(seed=11))
        app = create_app(parse_config(config(self.sim.url, self.faults)))
        self.proxy: ServerHandle = serve_in_thread(embedded_config(app))
        self.client = openai.OpenAI(base_url=self.proxy.base_url, api_key="none", max_retries=0, timeout=30)
        self.http = httpx.Client(base_url=self.proxy.url, timeout=30)

    def close(self) -> None:
        self.client.close()
        self.http.close()
        self.proxy.stop()
        self.sim.stop()

    # -- what the proxy counted and the simulator served ------------------------------------------

    def counts(self) -> dict[tuple[str, str], float]:
        """its_requests_total by (route, status), and its_tokens_total by (route, "tokens")."""
        out: dict[tuple[str, str], float] = {}
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(("its_requests_total{", "its_tokens_total{")):
                labels, value = line[line.index("{") + 1:line.rindex("}")], float(line.rsplit(" ", 1)[1])
                fields = dict(part.split("=", 1) for part in labels.split('",') if "=" in part)
                route = fields["route"].strip('"')
                key = (route, fields["status"].strip('"')) if line.startswith("its_requests") else (route, "tokens")
                out[key] = out.get(key, 0.0) + value
        return out

    def served(self) -> int:
        return int(httpx.get(f"{self.sim.url}/stats").json().get("total_tokens", 0))

    def measure(self, route: str, send) -> tuple[str, int, str, int, int]:
        """Run `send()` (returns outcome, told); then what the proxy counted and metered for `route`."""
        before, served0 = self.counts(), self.served()
        outcome, told = send()
        after = before
        for _ in range(100):  # a stream settles when it closes: wait for the count (at most 5 s)
            after = self.counts()
            if any(k[0] == route and k[1] != "tokens" and v > before.get(k, 0) for k, v in after.items()):
                break
            time.sleep(0.05)
        counted = ",".join(k[1] for k, v in after.items()
                           if k[0] == route and k[1] != "tokens" and v > before.get(k, 0)) or "none"
        metered = int(after.get((route, "tokens"), 0) - before.get((route, "tokens"), 0))
        time.sleep(0.05)  # the simulator bills as its reply ends
        return outcome, told, counted, metered, self.served() - served0

    # -- the cases --------------------------------------------------------------------------------

    def ask(self, model: str, stream: bool) -> tuple[str, int]:
        try:
            if not stream:
                r = self.client.chat.completions.create(model=model, messages=QUESTION, seed=1)
                return _checked(r.model_dump_json(), "200"), r.usage.total_tokens if r.usage else 0
            told, text = 0, ""
            events = self.client.chat.completions.create(model=model, messages=QUESTION, seed=1, stream=True,
                                                         stream_options={"include_usage": True})
            for chunk in events:
                text += chunk.model_dump_json()
                told = chunk.usage.total_tokens if chunk.usage else told
            return _checked(text, "200"), told
        except openai.APIStatusError as exc:
            code = (exc.body or {}).get("code") if isinstance(exc.body, dict) else None
            return _checked(exc.response.text, f"{exc.status_code} {code or ''}".strip()), 0
        except openai.APIConnectionError as exc:
            return f"CONNECTION {type(exc.__cause__).__name__}", 0
        except openai.APIError as exc:  # an error event inside a 200 stream
            code = (exc.body or {}).get("code") if isinstance(exc.body, dict) else None
            return _checked(str(exc.body), f"200+error {code or exc.message[:30]}"), 0

    def fault_rows(self) -> list[Row]:
        rows = []
        for i, fault in enumerate(self.faults):
            for surface, route in route_names(i).items():
                for stream in (False, True):
                    send = functools.partial(self.ask, route, stream)
                    outcome, told, counted, metered, served = self.measure(route, send)
                    rows.append(Row(fault, surface, stream, outcome, counted, told, metered - told, served))
        return rows

    def bad_input_rows(self) -> list[Row]:
        rows = []
        for name, raw in BAD_INPUTS:
            for surface, route in route_names(0).items():
                body = raw.replace(b'"M"', f'"{route}"'.encode())

                def send(body: bytes = body) -> tuple[str, int]:
                    r = self.http.post("/v1/chat/completions", content=body,
                                       headers={"content-type": "application/json"})
                    return _checked(r.text, f"{r.status_code} {r.json()['error'].get('code') or ''}".strip()), 0

                outcome, told, counted, metered, served = self.measure("(unrouted)", send)
                rows.append(Row(name, surface, "no", outcome, counted, told, metered - told, served))
        return rows

    def disconnect_rows(self) -> list[Row]:
        """The client leaves 0.2 s into a 300 ms-per-call upstream, before any answer."""
        i = self.faults.index("latency_ms=300") if "latency_ms=300" in self.faults else len(self.faults)
        rows = []
        for surface, route in route_names(i).items():
            for stream in (False, True):
                def send(route: str = route, stream: bool = stream) -> tuple[str, int]:
                    body = {"model": route, "messages": QUESTION, "stream": stream}
                    try:
                        with httpx.stream("POST", f"{self.proxy.url}/v1/chat/completions", json=body, timeout=0.2):
                            pass
                    except httpx.TimeoutException:
                        pass
                    time.sleep(0.5)  # let the upstream call end (or be cancelled)
                    return "client left at 0.2 s", 0

                outcome, told, counted, metered, served = self.measure(route, send)
                rows.append(Row("client disconnect", surface, stream, outcome, counted, told, metered - told,
                                served))
        return rows

    def load(self, requests: int = 200, n: int = 8) -> tuple[Row, str]:
        """`requests` concurrent vote n=`n` requests against a 500 ms upstream."""
        route = route_names(len(self.faults))["vote"]

        async def one(client: openai.AsyncOpenAI) -> tuple[int, int, float]:
            started = time.monotonic()
            try:
                r = await client.chat.completions.create(model=route, messages=QUESTION, extra_body={"its": {"n": n}})
                return 200, r.usage.total_tokens if r.usage else 0, time.monotonic() - started
            except openai.APIStatusError as exc:
                return exc.status_code, 0, time.monotonic() - started

        async def all_of_them() -> list[tuple[int, int, float]]:
            async with openai.AsyncOpenAI(base_url=self.proxy.base_url, api_key="none", max_retries=0,
                                          timeout=60, http_client=_pool(requests)) as client:
                return await asyncio.gather(*(one(client) for _ in range(requests)))

        results: list[tuple[int, int, float]] = []

        def send() -> tuple[str, int]:
            results.extend(asyncio.run(all_of_them()))
            statuses: dict[int, int] = {}
            for status, _, _ in results:
                statuses[status] = statuses.get(status, 0) + 1
            return " ".join(f"{s}×{c}" for s, c in sorted(statuses.items())), sum(t for _, t, _ in results)

        started = time.monotonic()
        outcome, told, counted, metered, served = self.measure(route, send)
        wall = time.monotonic() - started
        times = sorted(t for _, _, t in results)
        summary = (f"{requests} concurrent vote n={n} requests against a 500 ms upstream: wall {wall:.1f} s, "
                   f"p50 {times[len(times) // 2]:.2f} s, p99 {times[int(len(times) * 0.99) - 1]:.2f} s")
        return Row("load", "vote", "no", outcome, counted, told, metered - told, served), summary


def _pool(size: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=size, max_keepalive_connections=size))


def _checked(text: str, outcome: str) -> str:
    return f"LEAK {outcome}" if SECRET in text else outcome


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults", nargs="*", help="a subset of the fault modes (default: all)")
    ap.add_argument("--load", type=int, default=200, help="concurrent requests in the load case (0: none)")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    started = time.monotonic()
    campaign = Campaign(args.faults or FAULTS)
    try:
        rows = campaign.fault_rows() + campaign.bad_input_rows() + campaign.disconnect_rows()
        summary = ""
        if args.load:
            row, summary = campaign.load(args.load)
            rows.append(row)
    finally:
        campaign.close()
    print(markdown(HEADERS, [r.cells() for r in rows]))
    if summary:
        print(f"\n{summary}")
    print(f"\ncampaign took {time.monotonic() - started:.0f} s; rows with lost != 0: "
          f"{sum(r.lost != 0 for r in rows)}; 500s: {sum(r.outcome.startswith('500') for r in rows)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(zip(HEADERS, r.cells())) for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
