"""What the dashboard and a client read about spend: `GET /v1/its/history` (timestamped points
over a range, plus today's spend per key) and `GET /v1/its/budget` (the caller's own key).

Range: `?range=15m|1h|6h|24h` (default 1h) or `?since=<unix seconds>` (at most 24 h back);
anything else is a 400. Keys are shown by their SHA-256 prefix (the budgets' key id), never
in clear.
"""

from __future__ import annotations

import math
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.http.auth import client_key
from itsproxy.proxy.metering.budget_stores import StateError
from itsproxy.proxy.metering.budgets import Budgets, key_id
from itsproxy.proxy.telemetry.history import MAX_RANGE_S, History

RANGES = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600}
NO_STORE = {"Cache-Control": "no-store"}


def parse_since(params: dict[str, str], now: float) -> float:
    """The start of the requested range (unix seconds); ApiError 400 when it makes no sense."""
    if "range" in params and "since" in params:
        raise ApiError(400, "give either range or since, not both", param="range")
    if "since" in params:
        try:
            since = float(params["since"])
        except ValueError:
            raise ApiError(400, "since must be unix seconds", param="since") from None
        if not math.isfinite(since) or since > now or since < now - MAX_RANGE_S - 60:
            raise ApiError(400, f"since must be within the last {MAX_RANGE_S // 3600} hours", param="since")
        return since
    name = params.get("range", "1h")
    if name not in RANGES:
        raise ApiError(400, f"range must be one of {', '.join(RANGES)}", param="range")
    return now - RANGES[name]


def history_endpoint(history: History, budgets: Budgets | None, known_keys: list[str]):
    known = [key_id(k) for k in known_keys]

    async def endpoint(request: Request) -> Response:
        try:
            since = parse_since(dict(request.query_params), time.time())
        except ApiError as err:
            return err.response()
        body = await history.query(since)
        body["keys"], body["keys_error"] = await _keys(budgets, known)
        return JSONResponse(body, headers=NO_STORE)

    return endpoint


async def _keys(budgets: Budgets | None, known: list[str]) -> tuple[list[dict[str, Any]], str | None]:
    if budgets is None:
        return [], None
    try:
        return await budgets.day_status(known), None
    except StateError as exc:  # the page says so; history still answers
        return [], f"budget store unavailable: {exc}"


def budget_endpoint(budgets: Budgets | None):
    async def endpoint(request: Request) -> Response:
        key = client_key(request.headers)
        if key is None:  # with auth on, the middleware already refused an invalid key
            return ApiError(401, "an API key is required to read its budget", code="invalid_api_key").response()
        if budgets is None:
            return JSONResponse({"key": key_id(key), "unlimited": True, "limit": None, "spent": None,
                                 "reserved": None, "remaining": None, "resets_at": None}, headers=NO_STORE)
        try:
            return JSONResponse(await budgets.status(key), headers=NO_STORE)
        except StateError:
            return ApiError(503, "budget state is unavailable; retry shortly", code="state_unavailable",
                            retry=True).response()

    return endpoint
