"""POST /v1/chat/completions: parse, route, then pass through or scale."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from itsproxy.proxy.http.auth import client_key
from itsproxy.proxy.upstream.backends.base import UpstreamBusy, UpstreamError
from itsproxy.proxy.config import Route
from itsproxy.proxy.errors import ApiError, redact
from itsproxy.proxy.metering.ledger import Ledger
from itsproxy.proxy.http.chat_request import ChatRequest, check_its_n, parse_request
from itsproxy.proxy.outcome import Outcome, new_id
from itsproxy.proxy.runtime import Services
from itsproxy.strategies.pipeline import NotEnoughCandidates, RunContext, Unverified

log = logging.getLogger("itsproxy")


class ClientGone(Exception):
    """The client disconnected; its upstream work was cancelled."""


async def read_json(request: Request, limit: int) -> Any:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"request body is larger than the {limit} byte limit", code="body_too_large")
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, f"request body is larger than the {limit} byte limit", code="body_too_large")
        chunks.append(part)
    try:
        return json.loads(b"".join(chunks), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; accepting them would poison what we forward and render.
    raise ValueError(f"{name} is not valid JSON")


def upstream_failure(errors: list[BaseException], secrets: list[str], *, passthrough: bool) -> ApiError:
    """Map what went wrong upstream to one client error."""
    ups = [e for e in errors if isinstance(e, UpstreamError)]
    rejected = next((e for e in ups if e.rejected and not e.about_n), None)
    if rejected is not None:  # the upstream refused the request itself: its status and message
        return ApiError(rejected.status or 400, redact(rejected.message, secrets), param=rejected.param,
                        code=rejected.code if isinstance(rejected.code, str) else "upstream_rejected")
    if ups and all(isinstance(e, UpstreamBusy) for e in ups):
        return ApiError(503, ups[0].message, code="proxy_busy", retry=True)
    if any(e.status == 429 for e in ups):
        return ApiError(429, "the upstream is rate limiting", code="upstream_rate_limited", retry=passthrough)
    detail = redact(ups[-1].message, secrets) if ups else "no candidate could be drawn"
    return ApiError(502, f"upstream failed: {detail}", code="upstream_error", retry=passthrough)


async def wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def guarded(request: Request, coro, timeout: float):
    """Run `coro` under the request deadline; cancel it if the client goes away."""
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if watcher in done:
        raise ClientGone()
    raise ApiError(504, f"the request did not finish within its {timeout:g}s deadline", code="deadline_exceeded")


class Handler:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def handle(self, request: Request) -> Response:
        ex = self.s.exchange(client_key(request.headers))
        status, outcome, error, streaming = 200, None, None, False
        with self.s.inflight():
            try:
                body = await read_json(request, self.s.config.server.max_body_bytes)
                req = parse_request(body)
                await ex.admit(self.s.router.resolve(req.model))
                route = ex.route
                if req.stream:
                    response = await self.s.streams.open(request, req, ex)
                    streaming = True  # from here the stream settles the exchange itself
                    return response
                if route.passthrough:
                    return await guarded(request, self.passthrough(req, route, ex.ledger), route.limits.timeout_s)
                outcome = await guarded(request, self.scale(req, route, ex.ledger), route.limits.timeout_s)
                return JSONResponse(outcome.body(), headers=outcome.headers())
            except ApiError as err:
                status, error = err.status, err
                return err.response({"x-its-route": ex.route.name} if ex.route else None)
            except ClientGone:
                status = 499
                return Response(status_code=499)
            finally:
                if not streaming:
                    await ex.finish(status, outcome, error)

    async def passthrough(self, req: ChatRequest, route: Route, ledger: Ledger) -> JSONResponse:
        sampler = self.s.upstream.bind(ledger)
        entry = sampler.entry(route.target)
        try:
            resp, record = await sampler.call(entry, req.upstream_body(), "generate")
        except UpstreamError as exc:
            raise upstream_failure([exc], self.s.secrets, passthrough=True) from None
        usage = ledger.total().as_dict()
        resp["usage"] = {**(resp.get("usage") or {}), **usage}
        resp["its"] = {"route": route.name, "strategy": "passthrough", "candidates": len(resp.get("choices") or []),
                       "usage": ledger.usage_breakdown(ledger.total())}
        headers = {"x-its-route": route.name, "x-its-candidates": str(record.choices), "x-its-extra-tokens": "0"}
        cost = ledger.cost_usd()
        headers["x-its-cost-usd"] = "unknown" if cost is None else f"{cost:.8f}"
        return JSONResponse(resp, headers=headers)

    async def scale(self, req: ChatRequest, route: Route, ledger: Ledger) -> Outcome:
        return await run_scaling(self.s, req, route, ledger)


def scaling_context(services: Services, req: ChatRequest, route: Route, ledger: Ledger) -> RunContext:
    pipeline = route.pipeline
    assert pipeline is not None
    n = check_its_n(req, route.limits.max_n, pipeline.generate.n)
    params = dict(req.params)
    seed = params.pop("seed", None)
    # The route's temperature wins over the client's; without one, the client's stands.
    if pipeline.generate.temperature is not None or any(m.temperature is not None for m in pipeline.generate.pool):
        params.pop("temperature", None)
    return RunContext(messages=req.messages, params=params, sampler=services.upstream.bind(ledger), n=n,
                      route=route.name, seed=seed, spend=ledger, http=services.upstream.endpoints.bind(ledger),
                      search_stores=services.search_stores,
                      max_extra_tokens=route.limits.max_extra_tokens, max_cost_usd=route.limits.max_cost_usd)


async def run_scaling(services: Services, req: ChatRequest, route: Route, ledger: Ledger) -> Outcome:
    ctx = scaling_context(services, req, route, ledger)
    try:
        selection = await route.pipeline.run(ctx)
    except NotEnoughCandidates as exc:
        raise upstream_failure(exc.errors, services.secrets, passthrough=False) from None
    except UpstreamError as exc:
        raise upstream_failure([exc], services.secrets, passthrough=False) from None
    except Unverified as exc:
        raise ApiError(422, "no candidate passed verification", code="unverified",
                       extra={"critiques": exc.critiques[:20], "candidates": len(exc.selection.candidates)},
                       headers={"x-its-verified": "false"}) from None
    rid, created = new_id()
    return Outcome(route, req.model, selection, ledger, rid, created, req.messages, req.params)
