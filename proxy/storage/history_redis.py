"""The dashboard history in Redis: one hash per bucket (`<prefix>history:<step>:<start>`),
fields `<series>|<field>` added with HINCRBYFLOAT, each hash expiring when its tier forgets it.

Every replica adds its own requests to the same hashes, so any replica shows them all, and a
restarted proxy shows what came before. Writes never wait on the request: `push` merges into a
pending batch and one background task flushes it (one pipeline per batch). A Redis that fails
costs the batch (history, not money), one log line per outage and `its_state_errors_total{store=
"history"}`; the next batch tries again. Reads fall back to the replica's own memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from redis.asyncio import Redis
from redis.exceptions import RedisError

from itsproxy.proxy.metering.budget_stores import StateError
from itsproxy.proxy.telemetry.metrics import STATE_ERRORS

log = logging.getLogger(__name__)
STORE = "history"
MAX_PENDING_KEYS = 64  # buckets waiting for a flush (a Redis that hangs must not grow memory)


class RedisHistory:
    def __init__(self, client: Redis, prefix: str, where: str) -> None:
        self.client, self.prefix, self.where = client, prefix, where
        self._pending: dict[str, tuple[int, dict[str, float]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def _key(self, key: str) -> str:
        return f"{self.prefix}history:{key}"

    def push(self, key: str, ttl_s: int, fields: dict[str, float]) -> None:
        if key not in self._pending and len(self._pending) >= MAX_PENDING_KEYS:
            self._failed("too many buckets waiting for Redis; dropped")
            return
        _, acc = self._pending.setdefault(key, (ttl_s, defaultdict(float)))
        for k, v in fields.items():
            acc[k] += v
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for key, (ttl, fields) in batch.items():
                        for field, value in fields.items():
                            pipe.hincrbyfloat(self._key(key), field, value)
                        pipe.expire(self._key(key), ttl)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                self._failed(f"{type(exc).__name__}: {exc}")
                continue
            if self._failing:
                log.warning("history store answers again (%s)", self.where)
                self._failing = False

    def _failed(self, why: str) -> None:
        STATE_ERRORS.labels(STORE).inc()
        if not self._failing:  # one line per outage
            log.error("history store failed (%s: %s); buckets are kept in this replica's memory only",
                      self.where, why)
            self._failing = True

    async def fetch(self, keys: list[str]) -> list[dict[str, float]]:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(self._key(key))
                rows = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            raise StateError(STORE, f"{self.where}: {type(exc).__name__}") from exc
        return [{k: float(v) for k, v in row.items()} for row in rows]

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            try:  # the last batch, within the client's own socket timeout
                await self._task
            except Exception:  # noqa: BLE001 - closing must not fail shutdown
                pass
