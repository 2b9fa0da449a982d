"""Where daily budget spend lives: one row per (key id, UTC day) holding the tokens
spent or reserved, the cost spent (integer nano-USD, so concurrent sums stay exact)
and the tokens reserved by requests still in flight.

`reserve` checks and adds in one atomic step, so two requests (or two replicas) can
never both take the last headroom; `settle` swaps a reservation for what was spent.
A store that cannot answer raises `StateError`; what happens then is the operator's
`on_state_error` policy, applied by the service (budgets.py), never here.
"""

from __future__ import annotations

import abc
import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NANO = 1_000_000_000


class StateError(Exception):
    """Shared state could not be read or written (corrupt, locked, unreachable)."""

    def __init__(self, store: str, message: str) -> None:
        super().__init__(message)
        self.store = store


@dataclass(frozen=True)
class Usage:
    tokens: int = 0  # spent + reserved
    nano_usd: int = 0  # spent (cost is not reserved: prices are known only after the call)
    reserved: int = 0  # tokens held by requests in flight

    @property
    def spent_tokens(self) -> int:
        return self.tokens - self.reserved


@dataclass(frozen=True)
class Limits:
    """A key's limits in store units; None: no limit."""

    tokens: int | None
    nano_usd: int | None

    def has_room(self, u: Usage) -> bool:
        return ((self.tokens is None or u.tokens < self.tokens)
                and (self.nano_usd is None or u.nano_usd < self.nano_usd))


class BudgetStore(abc.ABC):
    name = "budgets"  # the `store` label of its_state_errors_total
    where = "memory"  # the file or URL, for log lines

    @abc.abstractmethod
    async def usage(self, key_id: str, day: str) -> Usage: ...

    @abc.abstractmethod
    async def reserve(self, key_id: str, day: str, tokens: int, limits: Limits) -> tuple[bool, Usage]:
        """Atomically: if the key has room (see `Limits.has_room`), hold `tokens`. Returns (granted, usage after)."""

    @abc.abstractmethod
    async def settle(self, key_id: str, day: str, reserved: int, tokens: int, nano_usd: int) -> None:
        """Release `reserved` and add what was spent."""

    @abc.abstractmethod
    async def day_usage(self, day: str) -> dict[str, Usage]:
        """Every key id with spend or reservations on `day` (read-only: the dashboard's keys table)."""

    async def verify(self) -> None:
        """Raise StateError when the store is unusable (at startup, with the file or URL named)."""
        return None

    async def aclose(self) -> None:
        return None

    async def spent(self, key_id: str, day: str) -> tuple[int, float]:
        u = await self.usage(key_id, day)
        return u.tokens, u.nano_usd / NANO

    async def add(self, key_id: str, day: str, tokens: int, cost_usd: float) -> None:
        await self.settle(key_id, day, 0, int(tokens), round(cost_usd * NANO))


class MemoryBudgetStore(BudgetStore):
    """For tests and single-process demos; forgets everything on restart."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Usage] = {}

    async def usage(self, key_id: str, day: str) -> Usage:
        return self.rows.get((key_id, day), Usage())

    async def day_usage(self, day: str) -> dict[str, Usage]:
        return {k: u for (k, d), u in self.rows.items() if d == day}

    async def reserve(self, key_id: str, day: str, tokens: int, limits: Limits) -> tuple[bool, Usage]:
        u = self.rows.get((key_id, day), Usage())
        if not limits.has_room(u):
            return False, u
        self.rows[(key_id, day)] = u = Usage(u.tokens + tokens, u.nano_usd, u.reserved + tokens)
        return True, u

    async def settle(self, key_id: str, day: str, reserved: int, tokens: int, nano_usd: int) -> None:
        u = self.rows.get((key_id, day), Usage())
        self.rows[(key_id, day)] = Usage(u.tokens - reserved + tokens, u.nano_usd + nano_usd, u.reserved - reserved)


SCHEMA = """CREATE TABLE IF NOT EXISTS spend (
    key_id TEXT NOT NULL, day TEXT NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0, cost_nusd INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day))"""
SELECT = "SELECT tokens, cost_nusd, reserved FROM spend WHERE key_id = ? AND day = ?"
SELECT_DAY = "SELECT key_id, tokens, cost_nusd, reserved FROM spend WHERE day = ? ORDER BY key_id"
UPSERT = """INSERT INTO spend (key_id, day, tokens, cost_nusd, reserved) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (key_id, day) DO UPDATE SET tokens = tokens + excluded.tokens,
    cost_nusd = cost_nusd + excluded.cost_nusd, reserved = reserved + excluded.reserved"""


class SqliteBudgetStore(BudgetStore):
    """One connection used only from worker threads (never the event loop). WAL lets several
    worker processes share the file; reserve runs in one IMMEDIATE transaction, so the check
    and the add cannot interleave. The busy timeout and the lock wait are both `timeout_s`:
    a locked file fails fast (StateError) instead of queueing every request behind it."""

    def __init__(self, path: str, timeout_s: float = 0.5) -> None:
        self.path = self.where = path
        self.timeout_s = timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            if self._closed:
                raise StateError(self.name, "budget store is closed")
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout_s, check_same_thread=False,
                                   isolation_level=None)
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute(SCHEMA)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(spend)")}
                if "reserved" not in columns:  # a file from before reservations
                    conn.execute("ALTER TABLE spend ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if not self._lock.acquire(timeout=self.timeout_s):
            raise StateError(self.name, f"{self.path}: busy for more than {self.timeout_s:g}s")
        try:
            return fn(self._connect())
        except (sqlite3.Error, OSError) as exc:
            if self._conn is not None and self._conn.in_transaction:
                self._conn.rollback()
            raise StateError(self.name, f"{self.path}: {exc}") from exc
        finally:
            self._lock.release()

    async def usage(self, key_id: str, day: str) -> Usage:
        def q(conn: sqlite3.Connection) -> Usage:
            row = conn.execute(SELECT, (key_id, day)).fetchone()
            return Usage(*row) if row else Usage()
        return await asyncio.to_thread(self._run, q)

    async def day_usage(self, day: str) -> dict[str, Usage]:
        def q(conn: sqlite3.Connection) -> dict[str, Usage]:
            return {row[0]: Usage(*row[1:]) for row in conn.execute(SELECT_DAY, (day,))}
        return await asyncio.to_thread(self._run, q)

    async def reserve(self, key_id: str, day: str, tokens: int, limits: Limits) -> tuple[bool, Usage]:
        def tx(conn: sqlite3.Connection) -> tuple[bool, Usage]:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(SELECT, (key_id, day)).fetchone()
            u = Usage(*row) if row else Usage()
            if not limits.has_room(u):
                conn.execute("ROLLBACK")
                return False, u
            conn.execute(UPSERT, (key_id, day, tokens, 0, tokens))
            conn.execute("COMMIT")
            return True, Usage(u.tokens + tokens, u.nano_usd, u.reserved + tokens)
        return await asyncio.to_thread(self._run, tx)

    async def settle(self, key_id: str, day: str, reserved: int, tokens: int, nano_usd: int) -> None:
        args = (key_id, day, tokens - reserved, nano_usd, -reserved)
        await asyncio.to_thread(self._run, lambda conn: conn.execute(UPSERT, args))

    def verify_now(self) -> None:
        """Open the file and check it (synchronous: startup and check-config only)."""
        def check(conn: sqlite3.Connection) -> None:
            result = conn.execute("PRAGMA quick_check").fetchone()
            if not result or result[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {result[0] if result else 'no answer'}")
        self._run(check)

    async def verify(self) -> None:
        await asyncio.to_thread(self.verify_now)

    def close_now(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close_now)
