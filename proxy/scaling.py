"""The one entry for every surface, stream or not.

A surface (chat, completions, responses …) only translates: its wire format
into one `Call`, and one outcome back into JSON or SSE. Everything else
happens here, once: route, admit, run under one deadline and one disconnect
watcher, and settle the request's `Exchange` exactly once, however it ends
(success, error, deadline, client gone before or after the first byte).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from itsproxy.proxy.config import Route
from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.http.auth import caller_key
from itsproxy.proxy.http.body import read_json
from itsproxy.proxy.http.json_response import FastJSONResponse
from itsproxy.proxy.http.sse import KEEPALIVE, EventStream, client_gone
from itsproxy.proxy.metering.ledger import Ledger
from itsproxy.proxy.outcome import Outcome, new_id, passthrough_headers, passthrough_its
from itsproxy.proxy.redact import Redactor
from itsproxy.proxy.runtime import Exchange, Services
from itsproxy.proxy.storage.response_cache import Entry, request_key
from itsproxy.proxy.surface import Call, Relay, ScalingStream, Surface
from itsproxy.proxy.upstream.backends.base import UpstreamBusy, UpstreamError, UpstreamProtocolError
from itsproxy.strategies.pipeline import NoAnswer, NotEnoughCandidates, Pipeline, RunContext, Unverified

T = TypeVar("T")
STREAM_GRACE_S = 2.0


class ClientGone(Exception):
    """The client disconnected; its upstream work was cancelled."""


def upstream_failure(errors: list[BaseException], redactor: Redactor, *, passthrough: bool) -> ApiError:
    """Map what went wrong upstream to one client error, every field through the redactor."""
    return _upstream_failure(errors, passthrough).redacted(redactor)


def _upstream_failure(errors: list[BaseException], passthrough: bool) -> ApiError:
    ups = [e for e in errors if isinstance(e, UpstreamError)]
    # A refused `n` on a scaling route is ours to handle (we fan out); on passthrough it was the client's n.
    rejected = next((e for e in ups if e.rejected and (passthrough or not e.about_n)), None)
    if rejected is not None:  # the upstream refused the request itself: its status and message
        return ApiError(rejected.status or 400, rejected.message, param=rejected.param,
                        code=rejected.code or "upstream_rejected")
    if ups and all(isinstance(e, UpstreamBusy) for e in ups):
        return ApiError(503, ups[0].message, code="proxy_busy", retry=True, headers={"retry-after": "1"})
    limited = [e for e in ups if e.status == 429]
    if limited:
        waits = [e.retry_after for e in limited if e.retry_after is not None]
        headers = {"retry-after": str(math.ceil(min(waits)))} if waits else None
        return ApiError(429, "the upstream is rate limiting", code=limited[0].code or "upstream_rate_limited",
                        retry=passthrough, headers=headers)
    detail = ups[-1].message if ups else "no candidate could be drawn"
    code = ups[-1].code if ups and isinstance(ups[-1], UpstreamProtocolError) else "upstream_error"
    return ApiError(502, f"upstream failed: {detail}", code=code, retry=passthrough)


def deadline_error(route: Route) -> ApiError:
    return ApiError(504, f"the request did not finish within its {route.limits.timeout_s:g}s deadline",
                    code="deadline_exceeded")


async def guarded(request: Request, work: Awaitable[T], deadline: float, route: Route) -> T:
    """Await `work` until the deadline; cancel it (and wait for it) if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(client_gone(request.receive))
    loop = asyncio.get_running_loop()
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=max(0.0, deadline - loop.time()),
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task in done:
        return task.result()
    if watcher in done:
        raise ClientGone()
    raise deadline_error(route)


def candidates(call: Call, route: Route) -> int:
    """How many candidates a request draws: the route's n (or its `its.n`), at least the client's n."""
    if route.passthrough or route.pipeline is None:
        return max(1, call.n or 1)
    return max(call.its.get("n", route.pipeline.generate.n), call.n or 1)


def request_maximum(call: Call, route: Route, completion_cap: int) -> int:
    """The tokens a request may spend, reserved in its key's budget before it runs: per
    candidate, the client's max_tokens (or `completion_cap`) plus the prompt estimated at
    one token per 3 characters of its JSON (an overestimate: text runs ~4 characters a token,
    and the JSON keys stand in for the per-message framing tokens). Judge, repair
    and reward calls are not in it: they are settled after, like any spend."""
    p = call.params
    cap = p.get("max_tokens") or p.get("max_completion_tokens") or completion_cap
    prompt = json.dumps(call.messages if call.prompt is None else call.prompt, ensure_ascii=False)
    n = candidates(call, route)
    if not route.passthrough:
        n = min(n, route.limits.max_n)  # past max_n a scaling route refuses the request anyway
    return n * (int(cap) + len(prompt) // 3 + 1)


class Scaling:
    def __init__(self, services: Services) -> None:
        self.s = services

    def _reserve_cap(self) -> int:
        budgets = self.s.config.budgets
        return budgets.reserve_completion_tokens if budgets is not None else 0

    async def handle(self, request: Request, surface: Surface) -> Response:
        ex = self.s.exchange(caller_key(request.scope))
        handed_over = False  # a stream response settles the exchange itself, when it ends
        try:
            server = self.s.config.server
            call = surface.parse(await read_json(request, server.max_body_bytes, server.body_timeout_s))
            route = self.s.router.resolve(call.model)
            budgets = self.s.budgets is not None  # the maximum serialises the prompt: only when it is reserved
            await ex.admit(route, request_maximum(call, route, self._reserve_cap()) if budgets else 0)
            deadline = asyncio.get_running_loop().time() + route.limits.timeout_s
            if call.stream:
                response = await self._stream(request, surface, call, ex, deadline)
                handed_over = True
                return response
            if route.passthrough:
                return await guarded(request, self._forward(surface, call, ex, deadline), deadline, route)
            surface.check_scaling(call)
            key = _cache_key(call, route)
            outcome = await self._cached(call, ex, key)
            if outcome is None:
                outcome = await guarded(request, self._run(call, ex, deadline, key), deadline, route)
            ex.outcome = outcome
            return FastJSONResponse(surface.render(outcome, call), headers=outcome.headers())
        except ApiError as err:
            ex.fail(err)
            return err.response({"x-its-route": ex.route.name} if ex.route else None)
        except ClientGone:
            ex.client_left()
            return Response(status_code=ex.status)
        finally:
            if not handed_over:
                await ex.settle()

    async def _forward(self, surface: Surface, call: Call, ex: Exchange, deadline: float) -> JSONResponse:
        route, ledger = self._route(ex), ex.ledger
        sampler = self.s.upstream.bind(ledger, deadline)
        try:
            resp, record = await sampler.call(sampler.entry(route.target), surface.upstream_body(call), "generate",
                                              surface.wire)
        except UpstreamError as exc:
            raise upstream_failure([exc], self.s.config.redactor, passthrough=True) from None
        its = passthrough_its(route, ledger, record.choices)
        body = surface.render_passthrough(resp, its, ledger.total().as_dict())
        return FastJSONResponse(body, headers=passthrough_headers(route, ledger, record.choices))

    def _route(self, ex: Exchange) -> Route:
        assert ex.route is not None, "admitted before use"
        return ex.route

    # -- scaling routes ---------------------------------------------------------------------------

    def _context(self, call: Call, route: Route, ledger: Ledger, deadline: float | None = None) -> RunContext:
        pipeline = route.pipeline
        assert pipeline is not None
        n = candidates(call, route)
        if n > route.limits.max_n:
            param = "its.n" if call.its.get("n") == n else "n"
            raise ApiError(400, f"n={n} is above this route's limit of {route.limits.max_n} candidates",
                           param=param, code="n_above_limit")
        params = dict(call.params)
        seed = params.pop("seed", None)
        return RunContext(messages=call.messages, params=params, sampler=self.s.upstream.bind(ledger, deadline), n=n,
                          route=route.name, seed=seed, spend=ledger, http=self.s.upstream.endpoints.bind(ledger),
                          search_stores=self.s.search_stores,
                          max_extra_tokens=route.limits.max_extra_tokens, max_cost_usd=route.limits.max_cost_usd)

    async def _run(self, call: Call, ex: Exchange, deadline: float, cache_key: str | None = None) -> Outcome:
        """Run the route's pipeline; a verified outcome is stored under `cache_key` (routes with `cache:`)."""
        route = self._route(ex)
        ctx = self._context(call, route, ex.ledger, deadline)
        pipeline, overrides = _client_params(call, route)
        try:
            async with asyncio.timeout_at(deadline):
                selection = await pipeline.run(ctx)
        except TimeoutError:
            raise deadline_error(route) from None
        except NotEnoughCandidates as exc:
            raise upstream_failure(exc.errors, self.s.config.redactor, passthrough=False) from None
        except UpstreamError as exc:
            raise upstream_failure([exc], self.s.config.redactor, passthrough=False) from None
        except NoAnswer as exc:
            raise ApiError(422, f"nothing to select on: {exc.reason}", code="no_answer") from None
        except Unverified as exc:
            raise ApiError(422, "no candidate passed verification", code="unverified",
                           extra={"critiques": exc.critiques[:20], "candidates": len(exc.selection.candidates)},
                           headers={"x-its-verified": "false"}) from None
        rid, created = new_id()
        outcome = Outcome(route, call.model, selection, ex.ledger, rid, created, call.messages, call.params,
                          overrides=overrides)
        if cache_key is not None and route.cache_ttl_s is not None and selection.verified is True:
            entry = Entry.of(outcome.ranked(call.returned), selection.strategy, ex.ledger.total().total_tokens)
            await self.s.cache.put(route.name, cache_key, entry, route.cache_ttl_s)
        return outcome

    async def _cached(self, call: Call, ex: Exchange, key: str | None) -> Outcome | None:
        """A verified answer the route's response cache holds for this request: no upstream call."""
        route = self._route(ex)
        entry = await self.s.cache.get(route.name, key) if key is not None else None
        if entry is None:
            return None
        rid, created = new_id()
        return Outcome(route, call.model, entry.selection(), ex.ledger, rid, created, call.messages, call.params,
                       cache=entry.its())

    # -- streams ----------------------------------------------------------------------------------

    async def _stream(self, request: Request, surface: Surface, call: Call, ex: Exchange,
                      deadline: float) -> EventStream:
        route = self._route(ex)
        cached: Outcome | None = None
        if route.passthrough:
            events = await self._open_relay(request, surface, call, ex, deadline)
        else:
            surface.check_scaling(call)
            self._context(call, route, ex.ledger)  # a bad its.n is a 400 before the stream opens
            key = _cache_key(call, route)
            cached = await self._cached(call, ex, key)
            events = self._scaling_events(surface.scaling_stream(call), call, ex, deadline, cached, key)

        async def on_close(ending: str) -> None:
            if ending == "client_left":
                ex.client_left()
            elif ending == "deadline" and ex.status < 400:
                ex.fail(deadline_error(route))
            elif ending == "error":
                ex.fail(ApiError(500, "internal error in the proxy", code="internal_error"))
            await ex.settle()

        # The producer enforces the deadline itself; the stream's own backstop (a client that stops
        # reading) allows a little more, so the producer's error event gets out first.
        headers = {"x-its-route": route.name}
        if cached is not None:
            headers["x-its-cache"] = "hit"
        return EventStream(events, on_close, deadline + STREAM_GRACE_S, headers=headers)

    async def _scaling_events(self, render: ScalingStream, call: Call, ex: Exchange, deadline: float,
                              cached: Outcome | None = None,
                              cache_key: str | None = None) -> AsyncGenerator[bytes, None]:
        for part in render.opening():
            yield part
        if cached is not None:
            ex.outcome = cached
            for part in render.answer(cached):
                yield part
            return
        task = asyncio.ensure_future(self._run(call, ex, deadline, cache_key))
        try:
            while not task.done():
                done, _ = await asyncio.wait({task}, timeout=self.s.config.server.keepalive_s)
                if not done:
                    yield KEEPALIVE
            ex.outcome = task.result()
            ex.first_token()  # time to first token: the answer's first byte leaves now
            for part in render.answer(ex.outcome):
                yield part
        except ApiError as err:
            ex.fail(err)
            for part in render.error(err):
                yield part
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _open_relay(self, request: Request, surface: Surface, call: Call, ex: Exchange,
                          deadline: float) -> AsyncGenerator[bytes, None]:
        """Start the upstream stream and wait for its first chunk (so an upstream that refuses gets its
        own status), watching the client and the deadline from the first moment."""
        route = self._route(ex)
        body = {**surface.upstream_body(call), "stream_options": {"include_usage": True}}  # always meter
        chunks = self.s.upstream.bind(ex.ledger, deadline).stream(route.target, body, wire=surface.wire)
        try:
            first = await guarded(request, _first(chunks), deadline, route)
        except UpstreamError as exc:
            await chunks.aclose()
            raise upstream_failure([exc], self.s.config.redactor, passthrough=True) from None
        except BaseException:
            await chunks.aclose()
            raise
        return self._relay_events(surface.relay(call), first, chunks, ex, deadline)

    async def _relay_events(self, relay: Relay, first: dict[str, Any] | None, chunks: AsyncGenerator[dict, None],
                            ex: Exchange, deadline: float) -> AsyncGenerator[bytes, None]:
        route = self._route(ex)
        try:
            chunk = first
            while chunk is not None:
                for part in relay.feed(chunk):
                    ex.first_token()  # the first relayed byte: time to first token
                    yield part
                async with asyncio.timeout_at(deadline):  # around the upstream's wait only, never a yield
                    chunk = await _first(chunks)
            for part in relay.end(passthrough_its(route, ex.ledger), ex.ledger.total().as_dict()):
                yield part
        except UpstreamError as exc:
            err = upstream_failure([exc], self.s.config.redactor, passthrough=True)
            ex.fail(err if err.status >= 500 else ApiError(502, err.message, code=err.code))
            for part in relay.error(err):
                yield part
        except TimeoutError:
            ex.fail(deadline_error(route))
            for part in relay.error(deadline_error(route)):
                yield part
        finally:
            await chunks.aclose()


def _cache_key(call: Call, route: Route) -> str | None:
    """The response cache key (storage/response_cache.py: what is normalised and what is left out),
    None when the route does not cache."""
    if route.cache_ttl_s is None or route.passthrough:
        return None
    return request_key(route.name, dataclasses.asdict(call))


def _client_params(call: Call, route: Route) -> tuple[Pipeline, dict[str, Any]]:
    """The pipeline this request runs, and what the route overrode of the client's request.

    `client_params: override` (default): the route's temperature wins, and `its.overrides`
    says so. `respect`: the client's temperature stands (a per-request copy of the spec)."""
    pipeline = route.pipeline
    assert pipeline is not None
    spec, client = pipeline.generate, call.params.get("temperature")
    route_temps = [t for t in (spec.temperature, *(m.temperature for m in spec.pool)) if t is not None]
    if client is None or not route_temps:
        return pipeline, {}
    if route.client_params == "respect":
        pool = [dataclasses.replace(m, temperature=None) for m in spec.pool]
        return dataclasses.replace(pipeline, generate=dataclasses.replace(spec, temperature=None, pool=pool)), {}
    return pipeline, {"temperature": {"client": client, "route": route_temps[0] if len(set(route_temps)) == 1
                                      else sorted(set(route_temps))}}


async def _first(chunks: AsyncIterator[dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None
