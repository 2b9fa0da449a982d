"""Where the augmenting-string search keeps what it learned: an embedded SQLite file.

One row per (route, arm index, arm text hash) with pulls and reward sum. Keying on the
text's hash means that editing a string in config starts that arm afresh; old rows stay
but are never read. Every SQLite call runs in a worker thread (`asyncio.to_thread`) so
the event loop never waits on disk; updates are `pulls = pulls + ?` in one small
transaction, so concurrent requests (and several worker processes sharing the file, in
WAL mode with a busy timeout) never lose an update.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from itsproxy.proxy.telemetry.metrics import REGISTRY
from itsproxy.strategies.search.strings import ArmStats, arm_hash

log = logging.getLogger(__name__)

DEFAULT_FILE = "search.sqlite3"
BUSY_TIMEOUT_S = 10.0

# Created at import, like itsproxy.proxy.telemetry.metrics' own: in multi-process mode (PROMETHEUS_MULTIPROC_DIR
# set before prometheus_client is imported) their values land in the shared mmap files too.
AUGMENT_PULLS = Counter(
    "its_augment_pulls_total", "Candidates drawn with each augmenting string (arm = its index in config).",
    ["route", "arm"], registry=REGISTRY)
AUGMENT_REWARD = Counter(
    "its_augment_reward_total", "Reward earned by each augmenting string's candidates (verified or agreeing).",
    ["route", "arm"], registry=REGISTRY)

SCHEMA = """
CREATE TABLE IF NOT EXISTS augment_arms (
    route TEXT NOT NULL,
    arm INTEGER NOT NULL,
    text_hash TEXT NOT NULL,
    pulls INTEGER NOT NULL DEFAULT 0,
    reward REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (route, arm, text_hash)
)
"""
UPSERT = """
INSERT INTO augment_arms (route, arm, text_hash, pulls, reward) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (route, arm, text_hash) DO UPDATE SET
    pulls = pulls + excluded.pulls, reward = reward + excluded.reward
"""


class SearchStore:
    """One SQLite file. A single connection shared by worker threads under a lock: the
    statements are tiny, and one connection keeps `close()` simple."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._seq = itertools.count()  # seeds for requests that gave none

    def next_seed(self) -> int:
        return next(self._seq)

    # -- blocking side (worker threads only)

    def _connect(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the
        # write lock up front instead of failing on a read->write upgrade under contention.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")  # readers never block the writer (other workers)
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process crashes
        conn.execute(SCHEMA)
        return conn

    def _with_conn(self, fn):
        with self._lock:
            if self._closed:
                raise RuntimeError("search store is closed")
            if self._conn is None:
                self._conn = self._connect()
            return fn(self._conn)

    def _load(self, route: str, arms: list[str]) -> list[ArmStats]:
        rows = self._with_conn(lambda c: c.execute(
            "SELECT arm, text_hash, pulls, reward FROM augment_arms WHERE route = ?", (route,)).fetchall())
        found = {(arm, h): (pulls, reward) for arm, h, pulls, reward in rows}
        out = []
        for i, text in enumerate(arms):
            pulls, reward = found.get((i, arm_hash(text)), (0, 0.0))  # stale rows: other hashes, ignored
            out.append(ArmStats(i, text, int(pulls), float(reward)))
        return out

    def _record(self, route: str, arms: list[str], updates: dict[int, tuple[int, float]]) -> None:
        rows = [(route, i, arm_hash(arms[i]), int(p), float(r)) for i, (p, r) in sorted(updates.items())
                if 0 <= i < len(arms) and p > 0]
        if not rows:
            return

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(UPSERT, rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        self._with_conn(write)

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- async side (the event loop)

    async def load(self, route: str, arms: list[str]) -> list[ArmStats]:
        """The learned stats of each configured arm (zeros for arms never pulled)."""
        return await asyncio.to_thread(self._load, route, arms)

    async def record(self, route: str, arms: list[str], updates: dict[int, tuple[int, float]]) -> None:
        """Add {arm index: (pulls, reward sum)} to the stored totals, and to the metrics."""
        await asyncio.to_thread(self._record, route, arms, updates)
        for i, (pulls, reward) in updates.items():
            AUGMENT_PULLS.labels(route, str(i)).inc(max(pulls, 0))
            AUGMENT_REWARD.labels(route, str(i)).inc(max(reward, 0.0))

    def close(self) -> None:
        self._close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close)  # waits for an in-flight statement without blocking the loop


class SearchStores:
    """The stores of all routes: the default file under `server.state_dir`, plus any route's
    own `augment_search.path`. Files open lazily, so a config without search touches no disk."""

    def __init__(self, default_path: str | os.PathLike) -> None:
        self.default_path = str(default_path)
        self._stores: dict[str, SearchStore] = {}

    @classmethod
    def from_config(cls, config: Any) -> SearchStores:
        return cls(Path(config.server.state_dir) / DEFAULT_FILE)

    def get(self, path: str | None = None) -> SearchStore:
        key = os.path.abspath(path or self.default_path)
        store = self._stores.get(key)
        if store is None:
            store = self._stores[key] = SearchStore(key)
        return store

    async def aclose(self) -> None:
        for store in list(self._stores.values()):
            await store.aclose()
        self._stores.clear()
