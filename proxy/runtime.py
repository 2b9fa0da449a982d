"""What a running proxy holds: config, router, upstream, and the metering hooks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from itsproxy.proxy.metering.budgets import build_budgets
from itsproxy.proxy.config import Config, Route
from itsproxy.proxy.metering.ledger import Ledger, RequestReport
from itsproxy.proxy.routing import Router
from itsproxy.proxy.telemetry.traces import build_trace_hook
from itsproxy.proxy.upstream.sampler import Upstream

if TYPE_CHECKING:
    from itsproxy.proxy.outcome import Outcome


class Services:
    def __init__(self, config: Config) -> None:
        from itsproxy.proxy.telemetry import metrics
        from itsproxy.proxy.http.sse import Streams

        self.config = config
        self.router = Router(config)
        self.upstream = Upstream(config)
        self.secrets = config.secrets
        self.streams = Streams(self)
        self._metrics = metrics
        self.hooks: list[Any] = []  # extra observers of finished requests
        self.trace_hook = build_trace_hook(config)
        if self.trace_hook is not None:
            self.hooks.append(self.trace_hook)
        from itsproxy.proxy.storage.search_store import SearchStores

        self.search_stores = SearchStores.from_config(config)  # augment_search state, opened lazily
        self.budgets = build_budgets(config.extra.get("budgets"), config.server.state_dir,
                                     auth_enabled=bool(config.server.api_keys))

    def inflight(self) -> contextlib.AbstractContextManager:
        return self._metrics.inflight()

    def report(self, route: Route, status: int, started: float, ledger: Ledger,
               outcome: "Outcome | None" = None, error: Any = None) -> RequestReport:
        report = RequestReport(route=route.name, status=status, duration_s=time.monotonic() - started,
                               calls=list(ledger.calls), passthrough=route.passthrough)
        total = ledger.total()
        if outcome is not None:
            sel = outcome.selection
            report.selected = outcome.selected_tokens()
            report.candidates = len(sel.candidates)
            report.agreement = sel.agreement
            report.verified = sel.verified
            report.judge_checker_disagreements = sel.disagreements or 0
            report.candidates_saved = sel.stop.saved if sel.stop else 0
            report.tokens_saved_estimate = sel.stop.tokens_saved_estimate if sel.stop else 0
        elif route.passthrough:
            report.selected = total
            report.candidates = sum(c.choices for c in ledger.calls)
        elif error is not None and getattr(error, "code", None) == "unverified":
            report.verified = False
        report.extra_tokens = total.total_tokens - report.selected.total_tokens
        return report

    def observe(self, report: RequestReport, outcome: "Outcome | None" = None) -> None:
        self._metrics.observe(report)
        for hook in self.hooks:
            hook(report, outcome)

    def exchange(self, key: str | None) -> "Exchange":
        return Exchange(self, key, time.monotonic(), Ledger())

    async def aclose(self) -> None:
        await self.upstream.aclose()
        if self.trace_hook is not None:
            await self.trace_hook.aclose()
        await self.search_stores.aclose()
        if self.budgets is not None:
            await self.budgets.aclose()
        for route in self.config.routes:  # checkers and reward stages hold clients
            for stage in route.pipeline.stages if route.pipeline else []:
                if hasattr(stage, "aclose"):
                    await stage.aclose()


@dataclass
class Exchange:
    """One request's bookkeeping, settled exactly once whatever way it ends."""

    services: Services
    key: str | None  # the client's API key (for budgets)
    started: float
    ledger: Ledger
    route: Route | None = None
    settled: bool = False

    async def admit(self, route: Route) -> None:
        self.route = route
        if self.services.budgets is not None:
            await self.services.budgets.check(self.key)

    async def finish(self, status: int, outcome: "Outcome | None" = None, error: Any = None) -> None:
        if self.settled or self.route is None:
            return
        self.settled = True
        s = self.services
        s.observe(s.report(self.route, status, self.started, self.ledger, outcome, error), outcome)
        if s.budgets is not None:
            spent = self.ledger.total().total_tokens
            cost = sum(c.cost_usd or 0.0 for c in self.ledger.calls)  # priced calls count even if others are not
            # Shielded: a client leaving must not cancel the charge for what was spent.
            await asyncio.shield(asyncio.ensure_future(s.budgets.charge(self.key, spent, cost)))
