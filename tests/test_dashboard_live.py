"""The dashboard of a real proxy, in a real headless Chromium, while traffic flows."""

from __future__ import annotations

import threading
import uuid

from itsproxy.proxy.simulator import questions
from tests import observability_helpers as obs
from tests.test_dashboard_browser import CHARTS, body_attr, chart_container, chromium, tile_value

CHROMIUM = "/usr/bin/chromium"


def test_live_proxy_dashboard_draws_its_traffic(make_proxy, fresh_sim, tmp_path):
    browser = obs.require_binary(CHROMIUM, "chromium")
    name = f"dash-{uuid.uuid4().hex[:6]}"
    route = {"name": name, "match": {"model": "dash"}, "generate": {"model": "sim", "n": 5, "temperature": 0.8},
             "select": [{"check": {"python": "itsproxy.proxy.demo_checks:check_sum"}}, {"vote": {"extract": "number"}}],
             "repair": {"rounds": 1}, "on_unverified": "best_effort"}
    p = make_proxy({"routes": [route]}, fresh_sim)
    stop = threading.Event()

    def traffic():
        for i, (q, _) in enumerate(questions(seed=3, count=400)):
            if stop.is_set():
                return
            p.client.chat.completions.create(model="dash", messages=[{"role": "user", "content": q}], seed=i)

    for i, (q, _) in enumerate(questions(seed=4, count=5)):  # some history before the page opens
        p.client.chat.completions.create(model="dash", messages=[{"role": "user", "content": q}], seed=i)
    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        dom = chromium(browser, f"{p.url}/dashboard", tmp_path, "--dump-dom", budget_ms=10000)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert body_attr(dom, "data-polls") >= 2
    assert body_attr(dom, "data-poll-errors") == 0
    for chart in CHARTS:
        points, inner = chart_container(dom, chart)
        assert points > 0 and "<canvas" in inner, chart
    assert name in dom
    assert tile_value(dom, "verified") not in ("", "—")
