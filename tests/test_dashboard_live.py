"""The dashboard of a real proxy, in a real headless Chromium, while traffic flows.

Chromium reaches the proxy through a test front (`obs.stats_front`) that completes one more
request before answering each stats poll, so every pair of polls has traffic between them and
the charts (latency quantiles need requests that finished inside the window) always have data.
"""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import openai
import pytest

from itsproxy.proxy.simulator import questions
from tests import observability_helpers as obs
from tests.test_dashboard_browser import CHARTS, body_attr, chart_container, chromium, tile_value

pytestmark = pytest.mark.slow  # a real headless Chromium

CHROMIUM = "/usr/bin/chromium"


def test_live_proxy_dashboard_draws_its_traffic(make_proxy, fresh_sim, tmp_path):
    browser = obs.require_binary(CHROMIUM, "chromium")
    name = f"dash-{uuid.uuid4().hex[:6]}"
    route = {"name": name, "match": {"model": "dash"}, "generate": {"model": "sim", "n": 5, "temperature": 0.8},
             "select": [{"check": {"python": "itsproxy.proxy.demo_checks:check_sum"}}, {"vote": {"extract": "number"}}],
             "repair": {"rounds": 1}, "on_unverified": "best_effort"}
    p = make_proxy({"routes": [route]}, fresh_sim)

    def ask(seed: int, q: str) -> None:
        p.client.chat.completions.create(model="dash", messages=[{"role": "user", "content": q}], seed=seed)

    for i, (q, _) in enumerate(questions(seed=4, count=5)):  # some history before the page opens
        ask(i, q)
    traffic = itertools.cycle([(i, q) for i, (q, _) in enumerate(questions(seed=3, count=400))])
    with obs.LoopbackServer(obs.stats_front(p.url, lambda: ask(*next(traffic)))) as front:
        dom = chromium(browser, front.url("/dashboard"), tmp_path, "--dump-dom", budget_ms=10000)
    assert body_attr(dom, "data-polls") >= 2
    assert body_attr(dom, "data-poll-errors") == 0
    for chart in CHARTS:
        if chart == "dollars":
            continue  # the simulator's models carry no price here
        points, inner = chart_container(dom, chart)
        assert points > 0 and "<canvas" in inner, chart
    assert name in dom
    assert tile_value(dom, "requests") not in ("", "—", "0")


RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


def _operator_proxy(make_proxy, sim, tmp_path):
    """A proxy with keys and budgets, and an hour's worth of varied traffic already behind it."""
    from tests.test_dashboard_history import KEY, MSG, OTHER, priced_models, routes
    cfg = {"model_list": priced_models(sim.url), "routes": routes("live"),
           "server": {"api_keys": [KEY, OTHER], "state_dir": str(tmp_path / "state")},
           "budgets": {"tokens_per_day": 200_000, "keys": {OTHER: {"tokens_per_day": 5_000}}}}
    p = make_proxy(cfg, sim, api_key=KEY)
    other = openai.OpenAI(base_url=p.handle.base_url, api_key=OTHER, max_retries=0)
    for i, (q, _) in enumerate(questions(seed=5, count=6)):
        p.client.chat.completions.create(model="vote", messages=[{"role": "user", "content": q}], seed=i)
        p.client.chat.completions.create(model="adaptive", messages=[{"role": "user", "content": q}], seed=i)
        for _ in p.client.chat.completions.create(model="vote", messages=MSG, seed=i, stream=True):
            pass
        other.chat.completions.create(model="plain", messages=MSG, seed=i)
    with pytest.raises(openai.APIStatusError):
        p.client.chat.completions.create(model="broken", messages=MSG)
    return p, KEY


def _filled(dom: str) -> None:
    assert body_attr(dom, "data-polls") >= 1 and body_attr(dom, "data-poll-errors") == 0
    for chart in ("requests", "tokens", "dollars", "latency"):
        points, inner = chart_container(dom, chart)
        assert points > 0 and "<canvas" in inner, chart
    for tile in ("requests", "errors", "cost", "extra", "saved", "latency", "ttft"):
        assert tile_value(dom, tile) not in ("", "—", "$0"), tile
    assert "vote-live" in dom and "adaptive-live" in dom and "<td>sim-easy</td>" in dom
    assert dom.count('<tr><td>') >= 6  # routes, models and both keys have rows


def test_operator_dashboard_with_key_param_and_credentials_in_url(make_proxy, sim, tmp_path):
    browser = obs.require_binary(CHROMIUM, "chromium")
    p, key = _operator_proxy(make_proxy, sim, tmp_path)
    dom = chromium(browser, f"{p.url}/dashboard?key={key}&range=15m", tmp_path / "a", "--dump-dom", budget_ms=4000)
    _filled(dom)
    assert key not in dom.replace(f"?key={key}", "")  # the keys table shows key ids, never keys
    host = p.url.split("://", 1)[1]
    dom = chromium(browser, f"http://its:{key}@{host}/dashboard", tmp_path / "b", "--dump-dom", budget_ms=4000)
    _filled(dom)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shot = RESULTS / "dashboard.png"
    chromium(browser, f"{p.url}/dashboard?key={key}", tmp_path / "c", f"--screenshot={shot}", budget_ms=4000)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
