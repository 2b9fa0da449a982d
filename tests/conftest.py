"""Shared fixtures: the packaged simulator and the proxy, both on real loopback HTTP."""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from itsproxy.proxy.upstream.litellm_loader import OFFLINE_ENV

for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)

from itsproxy.proxy.config import parse_config  # noqa: E402
from itsproxy.proxy.http.app import create_app  # noqa: E402
from itsproxy.proxy.serving import ServerHandle, embedded_config, serve_in_thread  # noqa: E402
from itsproxy.proxy.simulator import SimConfig  # noqa: E402
from itsproxy.proxy.simulator import serve_in_thread as serve_simulator  # noqa: E402

KEY = "sk-upstream-secret-4f9a"  # the proxy's upstream key: must never leak


def stray_top_level_modules() -> list[str]:
    """Modules imported as top-level `proxy`/`strategies` (ours install as itsproxy.*)."""
    return sorted(m for m in sys.modules if m.split(".")[0] in ("proxy", "strategies"))


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if anything imported our folders as `proxy`/`strategies`: tests have the repo
    root on sys.path, so such an import works here and breaks in the installed wheel."""
    stray = stray_top_level_modules()
    if stray:
        session.config.get_terminal_writer().line(
            f"ERROR: top-level modules imported during the tests: {stray}; use itsproxy.proxy / itsproxy.strategies",
            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED  # the proxy's upstream key: must never leak


# Tests that drive an external program or several processes (marked here so their files stay as
# they are; tests/test_dashboard_*.py mark themselves). `-m "not slow"` leaves them out.
SLOW = {
    "tests/test_prometheus_server.py": None,  # None: the whole file
    "tests/test_metering.py": {"test_prometheus_reads_back_real_traffic", "test_several_workers_add_up"},
    "tests/test_metrics.py": {"test_multiprocess_workers_add_up_exactly"},
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        path, _, name = item.nodeid.partition("::")
        if path in SLOW and (SLOW[path] is None or name.split("[")[0] in SLOW[path]):
            item.add_marker(pytest.mark.slow)


def sim_models(sim_url: str, **variants: str) -> list[dict[str, Any]]:
    """model_list entries pointing at the simulator; variants map a name to model options."""
    names = {"sim": "sim", "sim-no-n": "sim@no_n", "sim-broken": "sim@fail_rate=1",
             "sim-hang": "sim@hang", "sim-slow": "sim@latency_ms=300", "sim-no-usage": "sim@no_usage",
             "sim-max2": "sim@max_n=2", "sim-bad": "sim@bogus_option", **variants}
    return [{"model_name": name, "litellm_params": {"model": f"openai/{opts}", "api_base": f"{sim_url}/v1",
                                                     "api_key": KEY}}
            for name, opts in names.items()]


class Proxy:
    def __init__(self, handle: ServerHandle, sim: Any, api_key: str = "none") -> None:
        self.handle = handle
        self.url = handle.url
        self.sim = sim
        self.client = openai.OpenAI(base_url=handle.base_url, api_key=api_key, max_retries=0, timeout=30)
        self.http = httpx.Client(base_url=handle.url, timeout=30)

    @property
    def services(self):
        return self.handle.app.state.services

    def sim_stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.sim.url}/stats").json()

    def stop(self) -> None:
        self.client.close()
        self.http.close()
        self.handle.stop()


def stop_all(servers: list[Any]) -> None:
    """Stop servers concurrently: a stop is mostly waiting on uvicorn's 0.1 s shutdown ticks."""
    if servers:
        with ThreadPoolExecutor(max_workers=len(servers)) as pool:
            list(pool.map(lambda server: server.stop(), servers))


@pytest.fixture(scope="module")
def module_servers():
    """Proxies and private simulators started by one test module, stopped together when it ends.

    Each test's servers are its own (own port, own app state); left idle until the module's end
    they take no traffic, and stopping them all at once costs one shutdown instead of one per test.
    A test that needs a stop inside it (a restart) calls `.stop()` itself; stopping twice is fine.
    """
    started: list[Any] = []
    yield started
    stop_all(started)


@pytest.fixture(scope="session")
def sim():
    handle = serve_simulator(SimConfig(seed=1))
    yield handle
    handle.stop()


@pytest.fixture
def fresh_sim(module_servers):
    """A simulator of one's own, for tests that change its settings or read its stats."""
    handle = serve_simulator(SimConfig(seed=3))
    module_servers.append(handle)
    return handle


def proxy_starter(started: list[Any]) -> Callable[..., Proxy]:
    def start(config: dict[str, Any], sim: Any, *, api_key: str = "none") -> Proxy:
        cfg = copy.deepcopy(config)
        cfg.setdefault("model_list", sim_models(sim.url))
        app = create_app(parse_config(cfg))
        proxy = Proxy(serve_in_thread(embedded_config(app)), sim, api_key)
        started.append(proxy)
        return proxy

    return start


@pytest.fixture
def make_proxy(module_servers) -> Callable[..., Proxy]:
    """`make_proxy(config, sim)`: a proxy on loopback with that config (the simulator's models by default)."""
    return proxy_starter(module_servers)


VOTE_ROUTE = {"name": "vote", "match": {"model": "math"}, "generate": {"model": "sim", "n": 9, "temperature": 0.8},
              "select": [{"vote": {"extract": "number"}}], "limits": {"max_n": 12, "timeout_s": 20}}
PASS_ROUTE = {"name": "pass", "match": {"model": "*"}, "generate": {"model": "sim"}, "passthrough": True}


@pytest.fixture(scope="module")
def proxy(module_servers, sim) -> Proxy:
    """One vote + passthrough proxy shared by a module's tests (they only send it requests)."""
    return proxy_starter(module_servers)({"routes": [VOTE_ROUTE, PASS_ROUTE]}, sim)


def scaling_route(select, n=5, name="r", **extra) -> dict[str, Any]:
    """A route on the simulator matching its own name, with the given select stages."""
    return {"name": name, "match": {"model": name}, "generate": {"model": "sim", "n": n, "temperature": 0.8},
            "select": select, **extra}


def ask_its(client, model: str, q: str, seed: int | None = None):
    """One question through the proxy: the response and its `its` object."""
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}], seed=seed)
    return r, r.model_extra["its"]


def stage_helpers(name: str, question: str):
    """`route` and `ask` bound to one stage's test defaults (route name, question)."""
    def route(select, n=5, name=name, **extra):
        return scaling_route(select, n, name, **extra)

    def ask(client, model=name, q=question, seed=None):
        return ask_its(client, model, q, seed)

    return route, ask


def send_json(handler, status: int, body: bytes) -> None:
    """Answer from a test's BaseHTTPRequestHandler."""
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def start_proxy(make_proxy, sim, routes, **models) -> Proxy:
    return make_proxy({"model_list": sim_models(sim.url, **models), "routes": routes}, sim)
