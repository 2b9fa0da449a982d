"""The live dashboard page, the stats JSON and /metrics, as Starlette endpoints.

The lead mounts them (and handles auth):
    Route("/dashboard", dashboard_page), Route("/v1/its/stats", stats_endpoint),
    Route("/v1/its/history", spend_view.history_endpoint(...)),
    Route("/metrics", metrics_endpoint), Mount("/dashboard/static", app=static_app)

The page is self-contained: its chart library (uPlot) is vendored under static/vendor,
so it works without internet access and without a CDN.
"""

from __future__ import annotations

import html
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles

from itsproxy.proxy.telemetry import metrics
from itsproxy.proxy.telemetry.stats import stats_snapshot

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/dashboard/static"
STATS_PATH = "/v1/its/stats"
HISTORY_PATH = "/v1/its/history"
NO_STORE = {"Cache-Control": "no-store"}

static_app = StaticFiles(directory=STATIC_DIR)

_ASSETS = ("vendor/uplot/uPlot.min.css", "dashboard.css", "vendor/uplot/uPlot.iife.min.js", "dashboard.js")


def _asset_url(root: str, name: str) -> str:
    # The file's mtime as a version: a redeploy never serves a stale script from cache.
    version = int((STATIC_DIR / name).stat().st_mtime)
    return html.escape(f"{root}{STATIC_PREFIX}/{name}?v={version}")


def _page(root: str) -> str:
    css = "".join(f'<link rel="stylesheet" href="{_asset_url(root, a)}">' for a in _ASSETS if a.endswith(".css"))
    js = "".join(f'<script src="{_asset_url(root, a)}" defer></script>' for a in _ASSETS if a.endswith(".js"))
    template = (STATIC_DIR / "dashboard.html").read_text(encoding="utf-8")
    return (template.replace("{{CSS}}", css).replace("{{JS}}", js)
            .replace("{{ROOT}}", html.escape(root)))


async def dashboard_page(request: Request) -> HTMLResponse:
    """GET /dashboard: the page; it polls the history (and stats) JSON itself."""
    # root_path keeps the page working when the proxy is served under a path prefix.
    return HTMLResponse(_page(request.scope.get("root_path", "")), headers=NO_STORE)


async def stats_endpoint(request: Request) -> JSONResponse:
    """GET /v1/its/stats: the JSON digest of the metrics registry."""
    return JSONResponse(stats_snapshot(), headers=NO_STORE)


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: Prometheus text (or OpenMetrics when the scraper asks for it)."""
    body, content_type = metrics.render(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})
