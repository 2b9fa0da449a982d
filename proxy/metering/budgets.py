"""Per API key daily budgets (tokens and USD): reserve before a request, settle after.

A request reserves its maximum (see `request_maximum` in scaling.py: n x (max_tokens or
`reserve_completion_tokens`) + a prompt estimate) while the key still has headroom
(spent + reserved < limit); settling swaps the reservation for what the ledger metered,
or keeps the whole reservation when a call broke off (cut body or stream, cancelled, past
its deadline): what the upstream generated then is unknown, so the budget is charged the
request's maximum rather than a guess (runtime.py; the client's `usage` stays "what arrived",
flagged estimated).
So however many requests run at once, a day's spend passes the limit by at most one
request's maximum (plus what the estimate missed: judge/repair calls, a long prompt).
Cost is checked (spent < limit) but not reserved: prices are known only after the call.
A reservation whose settlement never lands (the process killed, the store down at that
moment) stays counted for its day: the key loses headroom, it never gains any.

A store that fails (corrupt, locked, unreachable) is given `state_timeout_s`; then the
`on_state_error` policy answers (closed: 503, open: admit unmetered), one log line per
outage, `its_state_errors_total{store}`, and the store is left alone for a few seconds.

The `budgets:` section is parsed at load (config/budgets.py). Keys are stored as a
SHA-256 prefix, never in clear. Days are UTC dates. Without auth (no server.api_keys)
every request is charged to "anonymous": a bearer token that is not checked must not
buy a fresh budget.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from itsproxy.proxy.config.budgets import BudgetConfig, BudgetLimits, key_id, parse_budgets
from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.metering.budget_stores import (
    NANO,
    BudgetStore,
    Limits,
    MemoryBudgetStore,
    SqliteBudgetStore,
    StateError,
    Usage,
)
from itsproxy.proxy.telemetry.metrics import STATE_ERRORS

__all__ = ["ANONYMOUS", "BudgetConfig", "BudgetLimits", "BudgetStore", "Budgets", "MemoryBudgetStore",
           "Reservation", "SqliteBudgetStore", "StateError", "build_budgets", "key_id", "parse_budgets"]

log = logging.getLogger(__name__)
T = TypeVar("T")
ANONYMOUS = "anonymous"
DOWN_FOR_S = 2.0  # after a state error, the policy answers alone this long before the store is tried again
TIMEOUT_MARGIN_S = 0.25
INFLIGHT_RETRY_S = 2  # Retry-After when in-flight reservations (not spend) fill the budget


@dataclass
class Reservation:
    key_id: str
    day: str
    tokens: int  # held in the store; 0 when nothing was reserved (no limit, or the store was down)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _until_midnight(now: datetime) -> int:
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return max(1, int((midnight - now).total_seconds() + 0.999))  # ceil: retrying earlier is pointless


def _duration(seconds: int) -> str:
    h, m = divmod((seconds + 59) // 60, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m"



class Budgets:
    """The service: `reserve` before spending anything, `settle` once the request's ledger is final."""

    def __init__(self, config: BudgetConfig, store: BudgetStore, *, auth_enabled: bool,
                 now: Callable[[], datetime] = _utcnow) -> None:
        self.config, self.store, self.auth_enabled, self.now = config, store, auth_enabled, now
        self._down_until = 0.0  # monotonic; while in the future the store is not asked

    def key_id(self, key: str | None) -> str:
        return key_id(key) if (self.auth_enabled and key) else ANONYMOUS

    def limits(self, key: str | None) -> BudgetLimits:
        return self.config.overrides.get(self.key_id(key), self.config.default)

    def _day(self) -> tuple[str, datetime]:
        now = self.now().astimezone(UTC)
        return now.date().isoformat(), now

    async def _ask(self, op: Callable[[], Awaitable[T]]) -> T:
        """One store operation within the state timeout; StateError when it cannot answer."""
        if time.monotonic() < self._down_until:
            STATE_ERRORS.labels(self.store.name).inc()
            raise StateError(self.store.name, "down (recent error)")
        try:
            # A little past the store's own timeout, so its clearer error (e.g. "database is locked") wins.
            result = await asyncio.wait_for(op(), self.config.state_timeout_s + TIMEOUT_MARGIN_S)
        except (StateError, TimeoutError) as exc:
            STATE_ERRORS.labels(self.store.name).inc()
            why = str(exc) or f"{self.store.where}: no answer within {self.config.state_timeout_s:g}s"
            if self._down_until == 0.0:  # one line per outage, not one per request
                log.error("%s store failed (%s); applying on_state_error=%s until it answers",
                          self.store.name, why, self.config.on_state_error)
            self._down_until = time.monotonic() + DOWN_FOR_S
            raise StateError(self.store.name, why) from None
        if self._down_until:
            log.warning("%s store answers again", self.store.name)
            self._down_until = 0.0
        return result

    def _unavailable(self, exc: StateError) -> ApiError:
        return ApiError(503, "budget state is unavailable, so this request cannot be metered against its "
                        "budget (on_state_error: closed); retry shortly", code="state_unavailable", retry=True,
                        headers={"Retry-After": str(int(DOWN_FOR_S))})

    async def reserve(self, key: str | None, max_tokens: int) -> Reservation:
        """Hold `max_tokens` for this request, or raise 429 (budget used) / 503 (state down, closed)."""
        limits, kid = self.limits(key), self.key_id(key)
        day, now = self._day()
        if limits.tokens_per_day is None and limits.cost_usd_per_day is None:
            return Reservation(kid, day, 0)
        store_limits = Limits(limits.tokens_per_day, None if limits.cost_usd_per_day is None
                              else round(limits.cost_usd_per_day * NANO))
        tokens = max(0, int(max_tokens))
        try:
            granted, usage = await self._ask(lambda: self.store.reserve(kid, day, tokens, store_limits))
        except StateError as exc:
            if self.config.on_state_error == "open":
                return Reservation(kid, day, 0)
            raise self._unavailable(exc) from None
        if not granted:
            raise self._refusal(limits, usage, now)
        return Reservation(kid, day, tokens)

    async def check(self, key: str | None) -> None:
        """Raise 429 budget_exceeded once today's spend (and reservations) has reached a limit."""
        limits = self.limits(key)
        if limits.tokens_per_day is None and limits.cost_usd_per_day is None:
            return
        day, now = self._day()
        kid = self.key_id(key)
        try:
            usage = await self._ask(lambda: self.store.usage(kid, day))
        except StateError as exc:
            if self.config.on_state_error == "open":
                return
            raise self._unavailable(exc) from None
        store_limits = Limits(limits.tokens_per_day, None if limits.cost_usd_per_day is None
                              else round(limits.cost_usd_per_day * NANO))
        if not store_limits.has_room(usage):
            raise self._refusal(limits, usage, now)

    def _refusal(self, limits: BudgetLimits, u: Usage, now: datetime) -> ApiError:
        cost = u.nano_usd / NANO
        if limits.cost_usd_per_day is not None and cost >= limits.cost_usd_per_day:
            return self._exceeded("cost_usd_per_day", f"${cost:.4f} of ${limits.cost_usd_per_day:.2f}",
                                  limits.cost_usd_per_day, round(cost, 6), now)
        assert limits.tokens_per_day is not None
        if u.spent_tokens >= limits.tokens_per_day:
            return self._exceeded("tokens_per_day", f"{u.spent_tokens:,} of {limits.tokens_per_day:,} tokens",
                                  limits.tokens_per_day, u.spent_tokens, now)
        # Spend is under the limit, requests in flight hold the rest: free again when they finish.
        msg = (f"Daily token budget of this API key is held by requests in flight: {u.spent_tokens:,} spent and "
               f"{u.reserved:,} reserved of {limits.tokens_per_day:,} tokens. Retry when they finish.")
        return ApiError(429, msg, code="budget_reserved", retry=True,
                        headers={"Retry-After": str(INFLIGHT_RETRY_S)},
                        extra={"budget": "tokens_per_day", "limit": limits.tokens_per_day,
                               "spent": u.spent_tokens, "reserved": u.reserved})

    def _exceeded(self, budget: str, used: str, limit: float, spent: float, now: datetime) -> ApiError:
        wait = _until_midnight(now)
        resets = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        kind = "token" if budget == "tokens_per_day" else "cost"
        msg = (f"Daily {kind} budget exceeded for this API key ({budget}): {used} used today (UTC). "
               f"It resets at 00:00 UTC, in {_duration(wait)}.")
        return ApiError(429, msg, code="budget_exceeded", retry=False, headers={"Retry-After": str(wait)},
                        extra={"budget": budget, "limit": limit, "spent": spent,
                               "resets_at": resets.isoformat().replace("+00:00", "Z")})

    async def settle(self, reservation: Reservation, tokens: int, cost_usd: float | None) -> None:
        """Swap the reservation for what was spent (in the reservation's day). Never raises: a store
        that cannot take it is counted and logged (once per outage); the spend is lost."""
        if reservation.tokens == 0 and tokens <= 0 and not cost_usd:
            return
        r = reservation
        nano = round(float(cost_usd or 0.0) * NANO)
        try:
            await self._ask(lambda: self.store.settle(r.key_id, r.day, r.tokens, int(tokens), nano))
        except StateError:
            pass

    async def charge(self, key: str | None, tokens: int, cost_usd: float | None) -> None:
        """Add spend that had no reservation. An unknown cost (None) adds 0 USD: only tokens count."""
        day, _ = self._day()
        await self.settle(Reservation(self.key_id(key), day, 0), tokens, cost_usd)

    async def status(self, key: str | None) -> dict[str, Any]:
        """Today's budget of one key, for `GET /v1/its/budget` and the dashboard (read-only).
        Raises StateError when the store cannot answer."""
        day, now = self._day()
        kid = self.key_id(key)
        usage = await self._ask(lambda: self.store.usage(kid, day))
        return self._status(kid, self.limits(key), usage, now)

    async def day_status(self, known: list[str]) -> list[dict[str, Any]]:
        """Today's budget of every key id that spent today, plus the `known` ids (configured keys)."""
        day, now = self._day()
        rows = await self._ask(lambda: self.store.day_usage(day))
        ids = sorted(set(rows) | set(known))
        return [self._status(k, self.config.overrides.get(k, self.config.default), rows.get(k, Usage()), now)
                for k in ids]

    def _status(self, kid: str, limits: BudgetLimits, u: Usage, now: datetime) -> dict[str, Any]:
        resets = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        cost = round(u.nano_usd / NANO, 9)
        tokens_limit, usd_limit = limits.tokens_per_day, limits.cost_usd_per_day
        unlimited = tokens_limit is None and usd_limit is None
        return {
            "key": kid,  # the key's SHA-256 prefix, never the key
            "unlimited": unlimited,
            "limit": {"tokens": tokens_limit, "cost_usd": usd_limit},
            "spent": {"tokens": u.spent_tokens, "cost_usd": cost},
            "reserved": {"tokens": u.reserved},
            "remaining": None if unlimited else {
                "tokens": None if tokens_limit is None else max(0, tokens_limit - u.tokens),
                "cost_usd": None if usd_limit is None else max(0.0, round(usd_limit - cost, 9))},
            "resets_at": resets.isoformat().replace("+00:00", "Z"),
        }

    async def verify(self) -> None:
        await self.store.verify()

    async def aclose(self) -> None:
        await self.store.aclose()


def budget_store(config: BudgetConfig, state_dir: str) -> SqliteBudgetStore:
    path = config.path or os.path.join(state_dir, "budgets.sqlite3")
    return SqliteBudgetStore(path, config.state_timeout_s)


def build_budgets(config: BudgetConfig | None, state_dir: str, *, auth_enabled: bool,
                  store: BudgetStore | None = None) -> Budgets | None:
    """The service for `Config.budgets`: None when no budgets are configured."""
    if config is None:
        return None
    return Budgets(config, store or budget_store(config, state_dir), auth_enabled=auth_enabled)


def verify_budget_file(config: BudgetConfig | None, state_dir: str) -> None:
    """At startup (serve, check-config): raise StateError naming the file if it is not a usable database."""
    if config is None:
        return
    store = budget_store(config, state_dir)
    try:
        store.verify_now()
    finally:
        store.close_now()
