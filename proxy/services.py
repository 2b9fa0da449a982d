"""What a running proxy holds: config, router, upstream, and the metering hooks."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from proxy.config import Config, Route
from proxy.ledger import Ledger, RequestReport
from proxy.routing import Router
from proxy.traces import build_trace_hook
from proxy.upstream import Upstream

if TYPE_CHECKING:
    from proxy.respond import Outcome


class Services:
    def __init__(self, config: Config) -> None:
        from proxy import metrics
        from proxy.streaming import Streams

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
        from proxy.search_store import SearchStores

        self.search_stores = SearchStores.from_config(config)  # augment_search state, opened lazily

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
            report.agreement = sel.info.get("agreement")
            report.verified = sel.verified
            report.judge_checker_disagreements = int(sel.info.get("disagreements", 0) or 0)
            stop = sel.info.get("stop") or {}
            report.candidates_saved = int(stop.get("saved", 0) or 0)
            report.tokens_saved_estimate = int(stop.get("tokens_saved_estimate", 0) or 0)
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

    async def aclose(self) -> None:
        await self.upstream.aclose()
        if self.trace_hook is not None:
            await self.trace_hook.aclose()
        await self.search_stores.aclose()
