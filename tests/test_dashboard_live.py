"""The dashboard of a real proxy, in a real headless Chromium, while traffic flows.

Chromium reaches the proxy through a test front (`obs.stats_front`) that completes one more
request before answering each stats poll, so every pair of polls has traffic between them and
the charts (latency quantiles need requests that finished inside the window) always have data.
"""

from __future__ import annotations

import itertools
import uuid

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
        points, inner = chart_container(dom, chart)
        assert points > 0 and "<canvas" in inner, chart
    assert name in dom
    assert tile_value(dom, "verified") not in ("", "—")
