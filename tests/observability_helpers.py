"""Shared helpers for the observability tests (metrics, stats, dashboard, Prometheus, Grafana).

The tests run a small Starlette app that mounts the real endpoints, served by uvicorn on
loopback in a background thread; traffic is fed by calling `metrics.observe()` in this
process, which shares the registry with that app. Each test uses its own route names, so
other tests observing into the same process-wide registry do not disturb it.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from itsproxy.proxy import serving
from itsproxy.proxy.metering.ledger import CallRecord, RequestReport, Tokens
from itsproxy.proxy.telemetry import dashboard
from itsproxy.proxy.telemetry.history import History
from itsproxy.proxy.telemetry.spend_view import history_endpoint

WAIT_S = 30.0  # upper bound for every wait on an external process


def unique_route(prefix: str = "route") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_report(route: str, *, seed: int = 0, status: int = 200, duration_s: float = 0.3,
                agreement: float | None = 0.75, verified: bool | None = True) -> RequestReport:
    """A plausible scaling request: 3 generate calls (one cancelled), a judge with unknown price."""
    k = seed + 1
    calls = [
        CallRecord(0, "generate", "small", 100 + k, 40 + k, cost_usd=0.0002 * k),
        CallRecord(1, "generate", "small", 100 + k, 55 + 2 * k, cost_usd=0.0003 * k),
        CallRecord(2, "generate", "small", 100 + k, 7, cost_usd=0.0001, outcome="cancelled"),
        CallRecord(3, "judge", "big", 300 + k, 12 + k, cost_usd=None),
    ]
    selected = Tokens(calls[0].prompt_tokens, calls[0].completion_tokens)
    spent = sum(c.total_tokens for c in calls)
    return RequestReport(
        route=route, status=status, duration_s=duration_s, calls=calls, selected=selected,
        extra_tokens=spent - selected.total_tokens, candidates=3, agreement=agreement,
        verified=verified, judge_checker_disagreements=seed % 2, candidates_saved=5,
        tokens_saved_estimate=250 + k, extra_cost_usd=0.0004 * k, saved_cost_usd_estimate=0.001 * k,
        ttft_s=duration_s / 3 if seed % 2 else None)


def build_app(on_stats: Callable[[], None] | None = None, api_key: str | None = None,
              history: History | None = None) -> Starlette:
    """The endpoints as the proxy mounts them; `on_stats` runs before each stats or history answer.

    With `api_key`, the JSON endpoints want `Authorization: Bearer <key>` (like the proxy's auth).
    """
    history_json = history_endpoint(history or History(), None, [])

    def guarded(endpoint):
        async def answer(request):
            if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
                return JSONResponse({"error": {"message": "invalid API key"}}, status_code=401)
            if on_stats is not None:
                on_stats()  # lets a test add traffic between two dashboard polls
            return await endpoint(request)
        return answer

    return Starlette(routes=[
        Route("/dashboard", dashboard.dashboard_page),
        Route("/v1/its/stats", guarded(dashboard.stats_endpoint)),
        Route("/v1/its/history", guarded(history_json)),
        Route("/metrics", dashboard.metrics_endpoint),
        Mount("/dashboard/static", app=dashboard.static_app),
    ])


def stats_front(target_url: str, before_stats: Callable[[], None]) -> Starlette:
    """A GET-only front for a real server: each `/v1/its/stats` request first runs `before_stats`
    (in a worker thread, to completion), then everything is forwarded unchanged.

    Headless Chromium polls on virtual time, so polls may follow each other in a few milliseconds
    of wall time; traffic in the background may then finish no request between two polls. Work
    done inside the poll is seen by the next one, whatever the machine's load.
    """

    async def forward(request):
        if request.url.path in ("/v1/its/stats", "/v1/its/history"):
            await run_in_threadpool(before_stats)
        headers = {k: v for k, v in request.headers.items() if k in ("authorization", "accept")}
        async with httpx.AsyncClient(base_url=target_url, timeout=WAIT_S) as client:
            upstream = await client.get(request.url.path, params=request.query_params, headers=headers)
        kept = {k: v for k, v in upstream.headers.items() if k in ("content-type", "cache-control")}
        return Response(upstream.content, status_code=upstream.status_code, headers=kept)

    return Starlette(routes=[Route("/{path:path}", forward)])


class LoopbackServer:
    """`app` served on 127.0.0.1 (a free port) in a daemon thread, as the proxy's tests serve it."""

    def __init__(self, app) -> None:
        self.app = app
        self.handle = None
        self.port = 0

    def __enter__(self) -> LoopbackServer:
        self.handle = serving.serve_in_thread(serving.embedded_config(self.app, lifespan="off"))
        self.port = self.handle.port
        return self

    def __exit__(self, *exc) -> None:
        self.handle.stop()

    def url(self, path: str = "") -> str:
        return f"{self.handle.url}{path}"


def wait_until(predicate: Callable[[], object], what: str, timeout: float = WAIT_S,
               interval: float = 0.05):
    """Poll `predicate` until truthy and return its value; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def require_binary(path: str, package: str) -> str:
    """The binary's path; skip when missing outside CI, fail when missing in CI."""
    found = path if os.access(path, os.X_OK) else shutil.which(os.path.basename(path))
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{path} missing in CI: .ci/run must `apt-get install -y {package}`")
    pytest.skip(f"{path} not installed (apt-get install -y {package}); required when CI is set")


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """All samples of a Prometheus text exposition, as (sample name, labels, value)."""
    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def metric_names(text: str) -> set[str]:
    """Family and sample names present in an exposition (HELP/TYPE lines count too)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
    return names


def metric_sum(samples, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(v for n, lab, v in samples
               if n == name and all(lab.get(k) == want for k, want in labels.items()))
