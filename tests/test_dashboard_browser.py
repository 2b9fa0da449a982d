"""The dashboard page in a real headless Chromium: it polls the history, draws charts with data,
reports errors.

Chromium runs with a virtual-time budget: its timers (the 5 s poll) run fast while network
fetches to our loopback server are real, so a few polls take about a second of wall time.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

try:
    from tests import observability_helpers as obs
except ImportError:
    import observability_helpers as obs

from itsproxy.proxy.telemetry.history import History

pytestmark = pytest.mark.slow  # a real headless Chromium

CHROMIUM = "/usr/bin/chromium"
CHARTS = ("requests", "tokens", "dollars", "latency")
TILES = ("requests", "errors", "tokens", "cost", "extra", "saved", "latency", "ttft")


def chromium(binary: str, url: str, tmp: Path, *mode: str, budget_ms: int = 8000) -> str:
    """Run headless Chromium once; returns stdout. Its whole process group dies on timeout."""
    args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}",
            f"--virtual-time-budget={budget_ms}", "--window-size=1280,1500", *mode, url]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=obs.WAIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # chromium forks helpers; kill the group we started
        proc.communicate()
        pytest.fail(f"chromium did not finish within {obs.WAIT_S:.0f}s: {url}")
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}"
    return out.decode("utf-8", "replace")


def body_attr(dom: str, name: str) -> int:
    match = re.search(rf'<body[^>]*\b{name}="(\d+)"', dom)
    assert match, f"body has no {name}"
    return int(match.group(1))


def chart_container(dom: str, chart: str) -> tuple[int, str]:
    """(data-series-points, the container's inner HTML up to its figure's end)."""
    match = re.search(rf'<div[^>]*id="chart-{chart}"[^>]*>', dom)
    assert match, f"no chart container for {chart}"
    points = re.search(r'data-series-points="(\d+)"', match.group(0))
    assert points, f"chart {chart} has no data-series-points"
    inner = dom[match.end(): dom.find("</figure>", match.end())]
    return int(points.group(1)), inner


def tile_value(dom: str, tile: str) -> str:
    match = re.search(rf'id="tile-{tile}".*?<div class="value">(.*?)</div>', dom, re.S)
    assert match, f"no tile {tile}"
    return re.sub(r"<[^>]+>", "", match.group(1)).strip()


def banner(dom: str) -> tuple[bool, str]:
    match = re.search(r'<div([^>]*)id="error-banner"([^>]*)>(.*?)</div>', dom, re.S)
    assert match, "no error banner element"
    return " hidden" not in match.group(1) + match.group(2), match.group(3)


@pytest.fixture(scope="module")
def browser():
    return obs.require_binary(CHROMIUM, "chromium")


@pytest.fixture(scope="module")
def live_server():
    """Some traffic up front, and more on every poll, so rates between polls are non-zero."""
    route = obs.unique_route("browser")
    seeds = itertools.count()
    history = History()

    def feed():
        for _ in range(2):
            seed = next(seeds)
            history.record(obs.make_report(route, seed=seed, duration_s=0.2 + 0.1 * (seed % 7),
                                           status=(200, 200, 200, 502, 429)[seed % 5]))

    for _ in range(3):
        feed()
    with obs.LoopbackServer(obs.build_app(on_stats=feed, history=history)) as server:
        yield server


def test_dashboard_polls_and_draws_charts(browser, live_server, tmp_path):
    dom = chromium(browser, live_server.url("/dashboard"), tmp_path, "--dump-dom")
    assert body_attr(dom, "data-polls") >= 2, "the page should have polled several times"
    assert body_attr(dom, "data-poll-errors") == 0
    for chart in CHARTS:
        points, inner = chart_container(dom, chart)
        assert points > 0, f"chart {chart} has no data points"
        assert "<canvas" in inner, f"chart {chart} was not drawn"
    for tile in TILES:
        value = tile_value(dom, tile)
        assert value and value != "—", f"tile {tile} is empty: {value!r}"
    assert tile_value(dom, "errors") != "0"
    shown, _ = banner(dom)
    assert not shown, "no error banner when polling works"
    assert live_server.port and "<td>all routes</td>" in dom


def test_dashboard_screenshot(browser, live_server, tmp_path):
    shot = tmp_path / "dashboard.png"
    chromium(browser, live_server.url("/dashboard"), tmp_path, f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 30_000, "a blank page compresses to a few KB; charts and text do not"


def test_error_banner_and_api_key(browser, tmp_path):
    with obs.LoopbackServer(obs.build_app(api_key="sekrit")) as server:
        dom = chromium(browser, server.url("/dashboard"), tmp_path / "nokey", "--dump-dom", budget_ms=3000)
        shown, text = banner(dom)
        assert shown and "401" in text, f"expected a visible 401 banner, got {text!r}"
        assert body_attr(dom, "data-polls") == 0

        dom = chromium(browser, server.url("/dashboard?key=sekrit"), tmp_path / "key", "--dump-dom", budget_ms=3000)
        assert body_attr(dom, "data-polls") >= 1
        assert not banner(dom)[0]
