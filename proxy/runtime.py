"""What a running proxy holds (config, router, upstream, stores, observers), and the
`Exchange`: one request's bookkeeping, settled exactly once."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from itsproxy.proxy.config import Config, Route
from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.metering.budgets import Reservation, build_budgets, key_id
from itsproxy.proxy.metering.ledger import Ledger, RequestReport
from itsproxy.proxy.outcome import Outcome, new_id
from itsproxy.proxy.routing import Router
from itsproxy.proxy.storage.redis_state import RedisSearchStores, RedisState
from itsproxy.proxy.storage.search_store import SearchStores
from itsproxy.proxy.telemetry import metrics
from itsproxy.proxy.telemetry.access_log import access_line
from itsproxy.proxy.telemetry.traces import build_trace_hook
from itsproxy.proxy.upstream.pool import Upstream

UNROUTED = metrics.UNROUTED  # the route label of requests refused before routing
CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer


class Services:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.router = Router(config)
        self.upstream = Upstream(config)
        self.secrets = config.secrets
        self._metrics = metrics  # the module: observe(), INFLIGHT
        self.hooks: list[Any] = []  # extra observers of finished requests
        self.trace_hook = build_trace_hook(config)
        if self.trace_hook is not None:
            self.hooks.append(self.trace_hook)
        state = config.server.state
        timeout = config.budgets.state_timeout_s if config.budgets is not None else 0.5
        self.redis = RedisState(state, timeout) if state.backend == "redis" else None
        if config.server.access_log:
            self.hooks.append(access_line)
        # augment_search state (opened lazily) and budgets: Redis when shared, else SQLite files
        self.search_stores: SearchStores | RedisSearchStores = (
            self.redis.search_stores() if self.redis is not None else SearchStores.from_config(config))
        self.budgets = build_budgets(config.budgets, config.server.state_dir,
                                     auth_enabled=bool(config.server.api_keys),
                                     store=self.redis.budget_store() if self.redis is not None else None)

    def report(self, ex: Exchange) -> RequestReport:
        route, ledger, outcome = ex.route, ex.ledger, ex.outcome
        report = RequestReport(route=route.name if route else UNROUTED, status=ex.status,
                               duration_s=time.monotonic() - ex.started, calls=list(ledger.calls),
                               passthrough=bool(route and route.passthrough),
                               id=outcome.id if outcome is not None else ex.id,
                               key_id=key_id(ex.key) if ex.key else None)
        total = ledger.total()
        if outcome is not None:
            sel = outcome.selection
            report.selected = outcome.selected_tokens()
            report.candidates = len(sel.candidates)
            report.agreement = sel.agreement
            report.verified = sel.verified
            report.judge_checker_disagreements = sel.disagreements or 0
            report.degraded = sel.degraded is not None
            if sel.stop is not None:
                report.candidates_saved = sel.stop.saved
                report.tokens_saved_estimate = sel.stop.tokens_saved_estimate
        elif report.passthrough:
            report.selected = total
            report.candidates = sum(c.choices for c in ledger.calls)
        elif ex.error is not None and ex.error.code == "unverified":
            report.verified = False
        report.extra_tokens = total.total_tokens - report.selected.total_tokens
        return report

    def observe(self, report: RequestReport, outcome: Outcome | None = None) -> None:
        self._metrics.observe(report)
        for hook in self.hooks:
            hook(report, outcome)

    def exchange(self, key: str | None) -> Exchange:
        ex = Exchange(self, key, time.monotonic(), Ledger())
        self._metrics.INFLIGHT.inc()  # until settled
        return ex

    async def start(self) -> None:
        if self.budgets is not None:
            await self.budgets.verify()

    async def aclose(self) -> None:
        await self.upstream.aclose()
        if self.trace_hook is not None:
            await self.trace_hook.aclose()
        await self.search_stores.aclose()
        if self.budgets is not None:
            await self.budgets.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        for route in self.config.routes:  # checkers and reward stages hold clients
            for stage in route.pipeline.stages if route.pipeline else []:
                await stage.aclose()


@dataclass
class Exchange:
    """One request's bookkeeping, settled exactly once however it ends.

    Whoever learns how the request ended sets `status` (and `outcome` or
    `error`); `settle()` then meters, counts, traces and charges it. It is
    idempotent, and the budget charge is shielded from cancellation.
    """

    services: Services
    key: str | None  # the client's API key (for budgets)
    started: float
    ledger: Ledger
    route: Route | None = None
    status: int = 200
    outcome: Outcome | None = None
    error: ApiError | None = None
    settled: bool = False
    reservation: Reservation | None = None  # tokens held in the key's budget until settled
    id: str = field(default_factory=lambda: new_id("req")[0])

    async def admit(self, route: Route, max_tokens: int) -> None:
        """Route it and reserve its maximum (`max_tokens`, all candidates) in the key's budget."""
        self.route = route
        if self.services.budgets is not None:
            self.reservation = await self.services.budgets.reserve(self.key, max_tokens)

    def fail(self, error: ApiError) -> None:
        self.status, self.error = error.status, error

    def client_left(self) -> None:
        self.status = CLIENT_CLOSED

    async def settle(self) -> None:
        if self.settled:
            return
        self.settled = True
        s = self.services
        s._metrics.INFLIGHT.dec()
        s.observe(s.report(self), self.outcome)
        if s.budgets is not None and self.reservation is not None:
            spent = self.ledger.total().total_tokens
            if self.ledger.output_unknown:  # charge conservatively: the reservation, not a guess
                spent = max(spent, self.reservation.tokens)
            cost = sum(c.cost_usd or 0.0 for c in self.ledger.calls)  # priced calls count even if others are not
            # Shielded: a client leaving must not cancel the settlement of what was spent.
            await asyncio.shield(asyncio.ensure_future(s.budgets.settle(self.reservation, spent, cost)))
