"""What a running proxy holds (config, router, upstream, stores, observers), and the
`Exchange`: one request's bookkeeping, settled exactly once."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from itsproxy.proxy.config import Config, Route
from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.metering.budgets import Budgets, Reservation, build_budgets, key_id
from itsproxy.proxy.metering.ledger import Ledger, RequestReport
from itsproxy.proxy.metering.limits import LocalLimiter, Rate, RateLimits, Refused
from itsproxy.proxy.metering.spend import extra_cost, saved_cost
from itsproxy.proxy.outcome import Outcome
from itsproxy.proxy.routing import Router
from itsproxy.proxy.storage.redis_state import RedisSearchStores, RedisState
from itsproxy.proxy.storage.response_cache import LocalCache, Lookups
from itsproxy.proxy.storage.search_store import SearchStores
from itsproxy.proxy.telemetry import metrics
from itsproxy.proxy.telemetry.access_log import access_line
from itsproxy.proxy.telemetry.history import History
from itsproxy.proxy.telemetry.traces import build_trace_hook
from itsproxy.proxy.upstream.pool import Upstream

# An exchange's own id (the access log's, when there is no answer id): unique across replicas
# without a random draw per request (os.urandom is a system call).
_PROCESS, _SERIAL = secrets.token_hex(6), itertools.count(1)
log = logging.getLogger("itsproxy")
UNROUTED = metrics.UNROUTED  # the route label of requests refused before routing
CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer


class Services:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.router = Router(config)
        self.secrets = config.secrets
        self._metrics = metrics  # the module: observe(), INFLIGHT
        self.hooks: list[Any] = []  # extra observers of finished requests
        self.trace_hook = build_trace_hook(config)
        if self.trace_hook is not None:
            self.hooks.append(self.trace_hook)
        state = config.server.state
        timeout = config.budgets.state_timeout_s if config.budgets is not None else 0.5
        self.redis = RedisState(state, timeout) if state.backend == "redis" else None
        # rpm / tpm windows (keys and deployments): shared through Redis when it is the state backend
        self.limits = RateLimits(self.redis.limiter() if self.redis is not None else LocalLimiter(),
                                 on_state_error=config.budgets.on_state_error if config.budgets else "closed",
                                 timeout_s=timeout)
        self.upstream = Upstream(config, self.limits)
        # routes with `cache:` (verified answers): shared through Redis too
        self.cache = Lookups(self.redis.response_cache() if self.redis is not None else LocalCache())
        if config.server.access_log:
            self.hooks.append(access_line)
        self.history = History(self.redis.history_sink() if self.redis is not None else None)
        self.hooks.append(self.history.hook)
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
                               key_id=key_id(ex.key) if ex.key else None,
                               ttft_s=None if ex.first_token_at is None else ex.first_token_at - ex.started)
        total = ledger.total()
        if outcome is not None:
            sel = outcome.selection
            report.selected = outcome.selected_tokens()
            report.extra_cost_usd = extra_cost(ledger.calls, report.selected,
                                               self.upstream.prices.get(outcome.winner.sample.model))
            report.candidates = len(sel.candidates)
            report.agreement = sel.agreement
            report.verified = sel.verified
            report.judge_checker_disagreements = sel.disagreements or 0
            report.degraded = sel.degraded is not None
            if sel.stop is not None:
                report.candidates_saved = sel.stop.saved
                report.tokens_saved_estimate = sel.stop.tokens_saved_estimate
                report.saved_cost_usd_estimate = saved_cost(ledger.calls, sel.stop.drawn, sel.stop.saved)
        elif report.passthrough:
            report.selected = total
            report.candidates = sum(c.choices for c in ledger.calls)
        else:
            report.extra_cost_usd = extra_cost(ledger.calls, report.selected, None)  # no answer: all extra
            if ex.error is not None and ex.error.code == "unverified":
                report.verified = False
        report.extra_tokens = total.total_tokens - report.selected.total_tokens
        return report

    def observe(self, report: RequestReport, outcome: Outcome | None = None) -> None:
        self._metrics.observe(report)
        for hook in self.hooks:
            try:
                hook(report, outcome)
            except Exception:  # noqa: BLE001 - an observer's bug must not skip the budget charge after it
                log.exception("settlement hook %r failed for request %s", hook, report.id)

    def exchange(self, key: str | None) -> Exchange:
        ex = Exchange(self, key, time.monotonic(), Ledger())
        self._metrics.INFLIGHT.inc()  # until settled
        return ex

    async def start(self) -> None:
        if self.budgets is not None:
            await self.budgets.verify()

    async def aclose(self) -> None:
        await self.upstream.aclose()
        await self.limits.aclose()
        if self.trace_hook is not None:
            await self.trace_hook.aclose()
        await self.search_stores.aclose()
        if self.budgets is not None:
            await self.budgets.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        for route in self.config.routes:  # checkers and reward stages (and step scorers) hold clients
            if route.pipeline is None:
                continue
            for stage in route.pipeline.stages:
                await stage.aclose()
            if route.pipeline.generate.steps is not None:
                await route.pipeline.generate.steps.aclose()


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
    id: str = field(default_factory=lambda: f"req-its-{_PROCESS}{next(_SERIAL):x}")
    first_token_at: float | None = None  # monotonic; streams: when the answer's first byte left

    def first_token(self) -> None:
        """Mark the answer's first byte leaving (the first call wins): time to first token."""
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()

    async def admit(self, route: Route, max_tokens: int) -> None:
        """Route it and reserve its maximum (`max_tokens`, all candidates) in the key's budget."""
        self.route = route
        budgets = self.services.budgets
        if budgets is None:
            return
        await self._take_rate()
        self.reservation = await budgets.reserve(self.key, max_tokens)

    def _window(self, budgets: Budgets) -> str:
        """The name of this key's rpm/tpm window (by key id, never the key)."""
        return f"key:{budgets.key_id(self.key)}"

    async def _take_rate(self) -> None:
        """The key's rpm_limit / tpm_limit (budgets:): one request counted, or 429 with Retry-After."""
        budgets = self.services.budgets
        assert budgets is not None
        limits = budgets.limits(self.key)
        rate = Rate(limits.rpm_limit, limits.tpm_limit)
        try:
            await self.services.limits.take(self._window(budgets), rate)
        except Refused as exc:
            wait = str(max(1, math.ceil(exc.retry_after_s)))
            if exc.down:
                raise ApiError(503, "rate limit state is unavailable (on_state_error: closed); retry shortly",
                               code="state_unavailable", retry=True, headers={"Retry-After": wait}) from None
            which = " and ".join(f"{v} {k}" for k, v in (("requests", rate.rpm), ("tokens", rate.tpm)) if v)
            raise ApiError(429, f"Rate limit reached for this API key: at most {which} per minute. "
                           f"Retry in {wait}s.", code="rate_limit_exceeded", retry=True,
                           headers={"Retry-After": wait},
                           extra={"rpm_limit": rate.rpm, "tpm_limit": rate.tpm}) from None

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
        if s.budgets is not None and s.budgets.limits(self.key).tpm_limit is not None:
            tokens = self.ledger.total().total_tokens
            await asyncio.shield(asyncio.ensure_future(s.limits.spend(self._window(s.budgets), tokens)))
        if s.budgets is not None and self.reservation is not None:
            spent = self.ledger.total().total_tokens
            if self.ledger.output_unknown:  # charge conservatively: the reservation, not a guess
                spent = max(spent, self.reservation.tokens)
            cost = sum(c.cost_usd or 0.0 for c in self.ledger.calls)  # priced calls count even if others are not
            # Shielded: a client leaving must not cancel the settlement of what was spent.
            await asyncio.shield(asyncio.ensure_future(s.budgets.settle(self.reservation, spent, cost)))
