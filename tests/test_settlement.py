"""Every request is settled exactly once, however it ends.

The matrix: (stream or not) x (passthrough, vote, judge, check+repair, adaptive) x
(success, upstream error, deadline, client gone before the first byte, client gone
mid-way). For each request: exactly one settlement reaches the observers, with the
status the client's experience deserves (499 when it left), counted once in
`its_requests_total`, the tokens the ledger metered charged to the key's budget,
and a trace record written.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from itsproxy.proxy.metering.budgets import key_id
from itsproxy.proxy.telemetry.metrics import REGISTRY
from tests.conftest import Proxy, sim_models

CLIENT_KEY = "sk-client-settle"
MSG = [{"role": "user", "content": "What is 17 + 25?"}]
MODELS = {"ok": "sim", "broken": "sim@fail_rate=1", "slow": "sim@latency_ms=1500",
          "trickle": "sim@stream_delay_ms=150"}
STRATEGIES = {
    "passthrough": {"passthrough": True},
    "vote": {"select": [{"vote": {"extract": "number"}}]},
    "judge": {"select": [{"judge": {"model": "sim"}}]},
    "check": {"select": [{"check": {"python": "itsproxy.proxy.demo_checks:check_sum"}}, {"vote": {"extract": "number"}}],
              "repair": {"rounds": 1}, "on_unverified": "best_effort"},
    "adaptive": {"select": [{"vote": {"extract": "number"}}], "adaptive": {"rule": "beta", "min": 2, "batch": 2}},
}
CASES = {  # case -> (model, route timeout)
    "success": ("ok", 20.0), "error": ("broken", 20.0), "deadline": ("slow", 0.4),
    "gone_before": ("slow", 20.0), "gone_mid": ("slow", 20.0),
}
EXPECTED = {"success": 200, "error": 502, "deadline": 504, "gone_before": 499, "gone_mid": 499}


def _route(strategy: str, case: str) -> dict:
    spec = dict(STRATEGIES[strategy])
    model, timeout = CASES[case]
    if case == "gone_mid" and strategy == "passthrough":
        model = "trickle"  # live chunks, slowly: the client leaves after the first one
    generate = {"model": model}
    if strategy != "passthrough":
        generate.update(n=3, temperature=0.8)
    if "adaptive" in spec:
        generate["adaptive"] = spec.pop("adaptive")
    name = f"{strategy}-{case}"
    return {"name": name, "match": {"model": name}, "generate": generate, "limits": {"timeout_s": timeout}, **spec}


@pytest.fixture(scope="module")
def settle_proxy(sim, tmp_path_factory) -> Iterator[tuple[Proxy, list]]:
    from itsproxy.proxy.config import parse_config
    from itsproxy.proxy.http.app import create_app
    from itsproxy.proxy.serving import embedded_config, serve_in_thread

    state = tmp_path_factory.mktemp("state")
    traces = state / "t.jsonl"
    models = sim_models(sim.url, **{name: opts for name, opts in MODELS.items()})
    cfg = {"model_list": models, "routes": [_route(s, c) for s in STRATEGIES for c in CASES],
           "server": {"api_keys": [CLIENT_KEY], "keepalive_s": 0.1, "state_dir": str(state)},
           "budgets": {"tokens_per_day": 10_000_000}, "traces": {"path": str(traces), "include_passthrough": True}}
    app = create_app(parse_config(cfg))
    proxy = Proxy(serve_in_thread(embedded_config(app)), sim, CLIENT_KEY)
    reports: list = []
    proxy.services.hooks.append(lambda report, outcome: reports.append(report))
    proxy.traces_path = traces
    proxy.budget_db = state / "budgets.sqlite3"
    yield proxy, reports
    proxy.stop()


def _count(route: str, status: int) -> float:
    return REGISTRY.get_sample_value("its_requests_total", {"route": route, "status": str(status)}) or 0.0


def _spent(proxy: Proxy) -> int:
    if not proxy.budget_db.exists():
        return 0
    with sqlite3.connect(proxy.budget_db) as db:
        row = db.execute("SELECT SUM(tokens) FROM spend WHERE key_id = ?", (key_id(CLIENT_KEY),)).fetchone()
    return int(row[0] or 0)


def _traced(proxy: Proxy, route: str) -> list[int]:
    """The statuses of the route's trace records, in order."""
    proxy.services.trace_hook.flush()
    if not proxy.traces_path.exists():
        return []
    records = [json.loads(line) for line in proxy.traces_path.read_text().splitlines()]
    return [r["status"] for r in records if r.get("route") == route]


def _charged(proxy: Proxy, before: int, expected: int, timeout: float = 5.0) -> int:
    """The budget charge lands just after the observers ran: wait for it (bounded)."""
    end = time.monotonic() + timeout
    while _spent(proxy) - before != expected and time.monotonic() < end:
        time.sleep(0.02)
    return _spent(proxy) - before


def _charged_more(proxy: Proxy, before: int, than: int, timeout: float = 5.0) -> int:
    end = time.monotonic() + timeout
    while _spent(proxy) - before <= than and time.monotonic() < end:
        time.sleep(0.02)
    return _spent(proxy) - before


def _settled(reports: list, route: str, timeout: float = 15.0) -> list:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        mine = [r for r in reports if r.route == route]
        if mine:
            time.sleep(0.3)  # a second settlement, if there were one, would come now
            return [r for r in reports if r.route == route]
        time.sleep(0.02)
    return []


def _send(proxy: Proxy, route: str, stream: bool, case: str) -> None:
    body = {"model": route, "messages": MSG, "stream": stream, "seed": 3}
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    if case in ("gone_before", "gone_mid"):
        _leave(proxy, body, headers, stream, mid=case == "gone_mid")
        return
    client = openai.OpenAI(base_url=proxy.handle.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
    try:
        if stream:
            for _ in client.chat.completions.create(**body):
                pass
        else:
            client.chat.completions.create(**body)
    except openai.APIError:
        pass
    finally:
        client.close()


def _leave(proxy: Proxy, body: dict, headers: dict, stream: bool, *, mid: bool) -> None:
    """Send, then drop the connection: before any body byte, or after the first chunk."""
    timeout = httpx.Timeout(30, read=0.5 if not mid else 30)
    with httpx.Client(base_url=proxy.url, timeout=timeout) as http:
        try:
            with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                if not mid:
                    return  # headers (or nothing) received: leave before the body
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        return  # one chunk in (a scaling stream's role chunk, a passthrough's first token)
        except httpx.ReadTimeout:
            return


# Without a stream no byte reaches the client before the answer: "gone mid-way" exists only for streams.
MATRIX = [pytest.param(case, strategy, stream, id=f"{case}-{strategy}-{'stream' if stream else 'json'}")
          for case in CASES for strategy in STRATEGIES for stream in (False, True)
          if stream or case != "gone_mid"]


@pytest.mark.parametrize("case, strategy, stream", MATRIX)
def test_settled_exactly_once(settle_proxy, case: str, strategy: str, stream: bool) -> None:
    proxy, reports = settle_proxy
    route, expected = f"{strategy}-{case}", EXPECTED[case]
    reports[:] = [r for r in reports if r.route != route]  # json and stream share a route
    before_count, before_spent, before_traced = _count(route, expected), _spent(proxy), _traced(proxy, route)
    _send(proxy, route, stream, case)
    mine = _settled(reports, route)
    assert len(mine) == 1, f"settled {len(mine)} times"
    report = mine[0]
    assert report.status == expected
    assert _count(route, expected) - before_count == 1
    metered = sum(c.prompt_tokens + c.completion_tokens for c in report.calls)
    if any(c.output_unknown for c in report.calls):  # a call broke off: the reservation is kept (runtime.py)
        assert _charged_more(proxy, before_spent, metered) > metered, "charged its reservation"
    else:
        assert _charged(proxy, before_spent, metered) == metered, "the budget is charged what the ledger metered"
    assert _traced(proxy, route) == [*before_traced, expected]
    if case == "success":
        assert metered > 0
    else:
        assert report.calls, "the upstream calls it started are on the ledger"


def test_stream_disconnects_cannot_bypass_a_budget(make_proxy, sim, tmp_path) -> None:
    """Regression: streaming vote requests whose client left were never charged, so a key could
    spend past its daily budget by disconnecting."""
    cfg = {"model_list": sim_models(sim.url, slow="sim@latency_ms=400"),
           "routes": [{"name": "v", "match": {"model": "v"}, "generate": {"model": "slow", "n": 3},
                       "select": [{"vote": {"extract": "number"}}]}],
           "server": {"api_keys": [CLIENT_KEY], "state_dir": str(tmp_path)}, "budgets": {"tokens_per_day": 300}}
    proxy = make_proxy(cfg, sim, api_key=CLIENT_KEY)
    body = {"model": "v", "messages": MSG, "stream": True}
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    for _ in range(12):
        _leave(proxy, body, headers, True, mid=True)  # leave after the role chunk, while the vote runs
    statuses = []
    for _ in range(20):  # the charges land as each abandoned request settles
        r = proxy.http.post("/v1/chat/completions", json={**body, "stream": False}, headers=headers)
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
        time.sleep(0.2)
    assert statuses[-1] == 429, statuses


def test_passthrough_stream_keeps_its_deadline(make_proxy, sim) -> None:
    """Regression: the wait for the first chunk and the relay each had a full `timeout_s`, so a
    1 s route streamed for 1.6 s with status 200. One deadline covers both."""
    cfg = {"model_list": sim_models(sim.url, lagging="sim@latency_ms=700@stream_delay_ms=150"),
           "routes": [{"name": "p", "match": {"model": "p"}, "generate": {"model": "lagging"}, "passthrough": True,
                       "limits": {"timeout_s": 1.0}}]}
    proxy = make_proxy(cfg, sim)
    reports: list = []
    proxy.services.hooks.append(lambda report, outcome: reports.append(report))
    with proxy.http.stream("POST", "/v1/chat/completions",
                           json={"model": "p", "messages": [{"role": "user", "content": "Tell me a long story."}],
                                 "stream": True, "max_tokens": 60}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data:")]
    assert r.status_code == 200  # the stream had started when the deadline came
    assert '"deadline_exceeded"' in lines[-1], lines[-3:]
    assert [rep.status for rep in _settled(reports, "p")] == [504]
