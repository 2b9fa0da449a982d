"""Per API key daily budgets (tokens and USD), checked before a request and charged after.

The `budgets:` section is parsed at load (config/budgets.py). Keys are stored as a
SHA-256 prefix, never in clear. Days are UTC dates. Without auth (no server.api_keys)
every request is charged to "anonymous": a bearer token that is not checked must not
buy a fresh budget.
"""

from __future__ import annotations

import abc
import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from itsproxy.proxy.config.budgets import BudgetConfig, BudgetLimits, key_id, parse_budgets
from itsproxy.proxy.errors import ApiError

__all__ = ["ANONYMOUS", "BudgetConfig", "BudgetLimits", "BudgetStore", "Budgets", "MemoryBudgetStore",
           "SqliteBudgetStore", "build_budgets", "key_id", "parse_budgets"]

ANONYMOUS = "anonymous"
NANO = 1_000_000_000  # cost is stored in integer nano-USD so concurrent sums stay exact


class BudgetStore(abc.ABC):
    """Spend per (key id, UTC day). Small on purpose: a Redis store comes later."""

    @abc.abstractmethod
    async def spent(self, key_id: str, day: str) -> tuple[int, float]: ...

    @abc.abstractmethod
    async def add(self, key_id: str, day: str, tokens: int, cost_usd: float) -> None: ...

    async def aclose(self) -> None:
        return None


class MemoryBudgetStore(BudgetStore):
    """For tests and single-process demos; forgets everything on restart."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[int, int]] = {}

    async def spent(self, key_id: str, day: str) -> tuple[int, float]:
        tokens, nano = self.rows.get((key_id, day), (0, 0))
        return tokens, nano / NANO

    async def add(self, key_id: str, day: str, tokens: int, cost_usd: float) -> None:
        t, n = self.rows.get((key_id, day), (0, 0))
        self.rows[(key_id, day)] = (t + tokens, n + round(cost_usd * NANO))


SCHEMA = """CREATE TABLE IF NOT EXISTS spend (
    key_id TEXT NOT NULL, day TEXT NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0, cost_nusd INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day))"""
UPSERT = """INSERT INTO spend (key_id, day, tokens, cost_nusd) VALUES (?, ?, ?, ?)
    ON CONFLICT (key_id, day) DO UPDATE SET tokens = tokens + excluded.tokens,
    cost_nusd = cost_nusd + excluded.cost_nusd"""


class SqliteBudgetStore(BudgetStore):
    """One connection, guarded by a lock, used only from worker threads (never the
    event loop). WAL + busy timeout let several worker processes share the file;
    the upsert adds in SQL, so concurrent charges never lose an update."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            if self._closed:
                raise RuntimeError("budget store is closed")
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(SCHEMA)
            self._conn = conn
        return self._conn

    def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            return fn(self._connect())

    async def spent(self, key_id: str, day: str) -> tuple[int, float]:
        def q(conn: sqlite3.Connection) -> tuple[int, float]:
            row = conn.execute("SELECT tokens, cost_nusd FROM spend WHERE key_id = ? AND day = ?",
                               (key_id, day)).fetchone()
            return (row[0], row[1] / NANO) if row else (0, 0.0)
        return await asyncio.to_thread(self._run, q)

    async def add(self, key_id: str, day: str, tokens: int, cost_usd: float) -> None:
        args = (key_id, day, int(tokens), round(cost_usd * NANO))
        await asyncio.to_thread(self._run, lambda conn: conn.execute(UPSERT, args))

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                self._closed = True
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
        await asyncio.to_thread(close)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _until_midnight(now: datetime) -> int:
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return max(1, int((midnight - now).total_seconds() + 0.999))  # ceil: retrying earlier is pointless


def _duration(seconds: int) -> str:
    h, m = divmod((seconds + 59) // 60, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m"


class Budgets:
    """The service: `check` before spending anything, `charge` once the request's ledger is final."""

    def __init__(self, config: BudgetConfig, store: BudgetStore, *, auth_enabled: bool,
                 now: Callable[[], datetime] = _utcnow) -> None:
        self.config, self.store, self.auth_enabled, self.now = config, store, auth_enabled, now

    def key_id(self, key: str | None) -> str:
        return key_id(key) if (self.auth_enabled and key) else ANONYMOUS

    def limits(self, key: str | None) -> BudgetLimits:
        return self.config.overrides.get(self.key_id(key), self.config.default)

    def _day(self) -> tuple[str, datetime]:
        now = self.now().astimezone(UTC)
        return now.date().isoformat(), now

    async def check(self, key: str | None) -> None:
        """Raise 429 budget_exceeded once today's spend has reached a limit."""
        limits = self.limits(key)
        if limits.tokens_per_day is None and limits.cost_usd_per_day is None:
            return
        day, now = self._day()
        tokens, cost = await self.store.spent(self.key_id(key), day)
        if limits.tokens_per_day is not None and tokens >= limits.tokens_per_day:
            raise self._exceeded("tokens_per_day", f"{tokens:,} of {limits.tokens_per_day:,} tokens",
                                 limits.tokens_per_day, tokens, now)
        if limits.cost_usd_per_day is not None and cost >= limits.cost_usd_per_day:
            raise self._exceeded("cost_usd_per_day", f"${cost:.4f} of ${limits.cost_usd_per_day:.2f}",
                                 limits.cost_usd_per_day, round(cost, 6), now)

    def _exceeded(self, budget: str, used: str, limit: float, spent: float, now: datetime) -> ApiError:
        wait = _until_midnight(now)
        resets = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        kind = "token" if budget == "tokens_per_day" else "cost"
        msg = (f"Daily {kind} budget exceeded for this API key ({budget}): {used} used today (UTC). "
               f"It resets at 00:00 UTC, in {_duration(wait)}.")
        return ApiError(429, msg, code="budget_exceeded", retry=False, headers={"Retry-After": str(wait)},
                        extra={"budget": budget, "limit": limit, "spent": spent,
                               "resets_at": resets.isoformat().replace("+00:00", "Z")})

    async def charge(self, key: str | None, tokens: int, cost_usd: float | None) -> None:
        """Add a finished request's spend. An unknown cost (None) adds 0 USD: only tokens count."""
        if tokens <= 0 and not cost_usd:
            return
        day, _ = self._day()
        await self.store.add(self.key_id(key), day, int(tokens), float(cost_usd or 0.0))

    async def aclose(self) -> None:
        await self.store.aclose()


def build_budgets(config: BudgetConfig | None, state_dir: str, *, auth_enabled: bool) -> Budgets | None:
    """The service for `Config.budgets`: None when no budgets are configured."""
    if config is None:
        return None
    path = config.path or os.path.join(state_dir, "budgets.sqlite3")
    return Budgets(config, SqliteBudgetStore(path), auth_enabled=auth_enabled)
