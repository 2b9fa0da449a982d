"""Shared state on Redis (`server.state: {backend: redis, url: redis://...}`), so several
proxy replicas grant one budget and learn one set of search statistics.

Behind the same interfaces as the embedded SQLite stores:
- budgets: one hash per (UTC day, key id) with `tokens` (spent + reserved), `nano`
  (cost spent, nano-USD) and `reserved`; `reserve` is one Lua script (check and add
  cannot interleave across replicas), `settle` one MULTI. Each hash expires two days
  after its last write, so old days clean themselves up.
- search statistics: one hash per (store, route) with `<arm>:<text hash>:pulls|reward`
  fields, added with HINCRBY / HINCRBYFLOAT.
- response cache (storage/response_cache.py): one string per key, SET with PX (the
  route's ttl_s), so every replica serves what any of them stored.
- rpm / tpm windows (metering/limits.py): per name, a sorted set of requests and a hash
  of tokens per second, both on Redis's own clock (TIME, so replicas' clocks do not
  matter), trimmed, checked and added in one Lua script; they expire with the window.

Every call has the state timeout as its socket timeout; a Redis error or timeout is a
`StateError`, and the callers apply their policy (budgets: `on_state_error`; search:
the request proceeds on what is known). Keys start with `server.state.key_prefix`.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from itsproxy.proxy.config.server import StateConfig
from itsproxy.proxy.metering.budget_stores import BudgetStore, Limits, StateError, Usage
from itsproxy.proxy.metering.limits import WINDOW_S, Limiter, Rate
from itsproxy.proxy.storage.history_redis import RedisHistory
from itsproxy.proxy.storage.response_cache import Entry, ResponseCache
from itsproxy.proxy.storage.search_store import AUGMENT_PULLS, AUGMENT_REWARD
from itsproxy.proxy.telemetry.metrics import STATE_ERRORS
from itsproxy.strategies.search.strings import ArmStats, arm_hash

T = TypeVar("T")
MAX_CONNECTIONS = 128  # per replica
DAY_TTL_S = 2 * 86400  # a day's budget hash outlives its day by one more, then expires

RESERVE = """
local t = tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0')
local n = tonumber(redis.call('HGET', KEYS[1], 'nano') or '0')
local r = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local lt, ln = tonumber(ARGV[2]), tonumber(ARGV[3])
if (lt >= 0 and t >= lt) or (ln >= 0 and n >= ln) then
  return {0, t, n, r}
end
redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {1, t + tonumber(ARGV[1]), n, r + tonumber(ARGV[1])}
"""

# KEYS: requests zset, tokens hash (second -> tokens). ARGV: window ms, rpm (-1: none), tpm (-1: none),
# member. Returns 0 (counted) or the milliseconds until the request would be under both limits.
# Requests are exact (one member each); tokens are summed per second, so a check reads at most
# ~61 fields however many calls settled in the window.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win, rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - win)
local wait = 0
if rpm >= 0 then
  local n = redis.call('ZCARD', KEYS[1])
  if n >= rpm then
    local e = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
    wait = math.max(wait, tonumber(e[2]) + win - now)
  end
end
if tpm >= 0 then
  local h = redis.call('HGETALL', KEYS[2])
  local secs, used = {}, 0
  for i = 1, #h, 2 do
    local sec, tokens = tonumber(h[i]), tonumber(h[i + 1])
    if (sec + 1) * 1000 + win <= now then
      redis.call('HDEL', KEYS[2], h[i])
    else
      table.insert(secs, {sec, tokens})
      used = used + tokens
    end
  end
  table.sort(secs, function(a, b) return a[1] < b[1] end)
  local i = 1
  while used >= tpm and i <= #secs do
    used = used - secs[i][2]
    wait = math.max(wait, (secs[i][1] + 1) * 1000 + win - now)
    i = i + 1
  end
end
if wait > 0 then return wait end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], win)
return 0
"""
SPEND = """
local t = redis.call('TIME')
redis.call('HINCRBY', KEYS[1], t[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 0
"""


def public_url(url: str) -> str:
    """The URL without its password, for log lines and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisState:
    """One client (a connection pool) shared by every store of a proxy process."""

    def __init__(self, config: StateConfig, timeout_s: float = 0.5) -> None:
        assert config.url is not None, "parse_state requires a url for redis"
        self.url, self.prefix = public_url(config.url), config.key_prefix
        # A blocking pool: past MAX_CONNECTIONS operations wait (within the state timeout) for a
        # connection, instead of failing at once as redis-py's default pool does (a burst of
        # requests would otherwise look like an outage and trip on_state_error).
        pool = aioredis.BlockingConnectionPool.from_url(
            config.url, max_connections=MAX_CONNECTIONS, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, decode_responses=True)
        self.client = aioredis.Redis.from_pool(pool)
        self._reserve = self.client.register_script(RESERVE)
        self._history: RedisHistory | None = None
        self._take = self.client.register_script(TAKE)
        self._spend = self.client.register_script(SPEND)

    async def call(self, store: str, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisError, OSError) as exc:
            raise StateError(store, f"{self.url}: {type(exc).__name__}: {exc}") from exc

    def budget_store(self) -> RedisBudgetStore:
        return RedisBudgetStore(self)

    def search_stores(self) -> RedisSearchStores:
        return RedisSearchStores(self)

    def history_sink(self) -> RedisHistory:
        if self._history is None:
            self._history = RedisHistory(self.client, self.prefix, self.url)
        return self._history

    def limiter(self) -> RedisLimiter:
        return RedisLimiter(self)

    def response_cache(self) -> RedisCache:
        return RedisCache(self)

    async def aclose(self) -> None:
        if self._history is not None:
            await self._history.aclose()
        await self.client.aclose()


class RedisBudgetStore(BudgetStore):
    def __init__(self, state: RedisState) -> None:
        self.state, self.where = state, state.url

    def _key(self, key_id: str, day: str) -> str:
        return f"{self.state.prefix}budget:{day}:{key_id}"

    async def usage(self, key_id: str, day: str) -> Usage:
        key = self._key(key_id, day)
        t, n, r = await self.state.call(self.name, lambda: self.state.client.hmget(key, "tokens", "nano", "reserved"))
        return Usage(int(t or 0), int(n or 0), int(r or 0))

    async def day_usage(self, day: str) -> dict[str, Usage]:
        prefix = self._key("", day)

        async def scan() -> dict[str, Usage]:
            keys = [k async for k in self.state.client.scan_iter(match=f"{prefix}*", count=500)]
            async with self.state.client.pipeline(transaction=False) as pipe:
                for k in keys:
                    pipe.hmget(k, "tokens", "nano", "reserved")
                rows = await pipe.execute()
            return {k[len(prefix):]: Usage(int(t or 0), int(n or 0), int(r or 0))
                    for k, (t, n, r) in zip(keys, rows, strict=True)}
        return await self.state.call(self.name, scan)

    async def reserve(self, key_id: str, day: str, tokens: int, limits: Limits) -> tuple[bool, Usage]:
        args = [tokens, -1 if limits.tokens is None else limits.tokens,
                -1 if limits.nano_usd is None else limits.nano_usd, DAY_TTL_S]
        key = self._key(key_id, day)
        ok, t, n, r = await self.state.call(self.name, lambda: self.state._reserve(keys=[key], args=args))
        return bool(ok), Usage(int(t), int(n), int(r))

    async def settle(self, key_id: str, day: str, reserved: int, tokens: int, nano_usd: int) -> None:
        key = self._key(key_id, day)

        async def tx() -> None:
            async with self.state.client.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "tokens", tokens - reserved)
                pipe.hincrby(key, "reserved", -reserved)
                pipe.hincrby(key, "nano", nano_usd)
                pipe.expire(key, DAY_TTL_S)
                await pipe.execute()
        await self.state.call(self.name, tx)


class RedisSearchStore:
    """The augmenting-string statistics of one store name (a route's `augment_search.path`,
    or the default), shared by every replica."""

    def __init__(self, state: RedisState, name: str) -> None:
        self.state, self.name = state, name
        self._seq = itertools.count()

    @property
    def path(self) -> str:
        return f"{self.state.url} ({self.name})"

    def next_seed(self) -> int:
        return next(self._seq)

    def _key(self, route: str) -> str:
        return f"{self.state.prefix}search:{self.name}:{route}"

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self.state.call("search", op)
        except StateError:
            STATE_ERRORS.labels("search").inc()
            raise

    async def load(self, route: str, arms: list[str]) -> list[ArmStats]:
        key = self._key(route)
        found = await self._call(lambda: self.state.client.hgetall(key))
        out = []
        for i, text in enumerate(arms):
            field = f"{i}:{arm_hash(text)}"  # stale fields (edited strings) are never read
            out.append(ArmStats(i, text, int(found.get(f"{field}:pulls", 0)), float(found.get(f"{field}:reward", 0.0))))
        return out

    async def record(self, route: str, arms: list[str], updates: dict[int, tuple[int, float]]) -> None:
        rows = [(f"{i}:{arm_hash(arms[i])}", int(p), float(r)) for i, (p, r) in sorted(updates.items())
                if 0 <= i < len(arms) and p > 0]
        if not rows:
            return
        key = self._key(route)

        async def tx() -> None:
            async with self.state.client.pipeline(transaction=True) as pipe:
                for field, pulls, reward in rows:
                    pipe.hincrby(key, f"{field}:pulls", pulls)
                    pipe.hincrbyfloat(key, f"{field}:reward", reward)
                await pipe.execute()
        await self._call(tx)
        for i, (pulls, reward) in updates.items():
            AUGMENT_PULLS.labels(route, str(i)).inc(max(pulls, 0))
            AUGMENT_REWARD.labels(route, str(i)).inc(max(reward, 0.0))


class RedisSearchStores:
    def __init__(self, state: RedisState) -> None:
        self.state = state
        self._stores: dict[str, RedisSearchStore] = {}

    def get(self, path: str | None = None) -> RedisSearchStore:
        name = path or "default"
        store = self._stores.get(name)
        if store is None:
            store = self._stores[name] = RedisSearchStore(self.state, name)
        return store

    async def aclose(self) -> None:
        self._stores.clear()


class RedisLimiter(Limiter):
    """rpm / tpm windows shared by every replica (see TAKE)."""

    def __init__(self, state: RedisState) -> None:
        self.state = state
        self.window_ms = int(WINDOW_S * 1000)

    def _keys(self, name: str) -> list[str]:
        return [f"{self.state.prefix}rate:{name}:req", f"{self.state.prefix}rate:{name}:tok"]

    async def take(self, name: str, rate: Rate) -> float:
        rpm, tpm = (-1 if v is None else v for v in (rate.rpm, rate.tpm))
        args: list[str | int] = [self.window_ms, rpm, tpm, uuid.uuid4().hex]
        keys = self._keys(name)
        wait_ms = await self.state.call("limits", lambda: self.state._take(keys=keys, args=args))
        return int(wait_ms) / 1000

    async def spend(self, name: str, tokens: int) -> None:
        key = self._keys(name)[1]
        args: list[str | int] = [int(tokens), self.window_ms + 1000]
        await self.state.call("limits", lambda: self.state._spend(keys=[key], args=args))


class RedisCache(ResponseCache):
    """Verified answers shared by every replica, each expiring after its route's ttl_s."""

    def __init__(self, state: RedisState) -> None:
        self.state = state

    def _key(self, key: str) -> str:
        return f"{self.state.prefix}cache:{key}"

    async def get(self, key: str) -> Entry | None:
        k = self._key(key)
        raw = await self.state.call("cache", lambda: self.state.client.get(k))
        return Entry.loads(raw) if isinstance(raw, str) else None

    async def put(self, key: str, entry: Entry, ttl_s: float) -> None:
        k, raw, ms = self._key(key), entry.dumps(), max(1, int(ttl_s * 1000))
        await self.state.call("cache", lambda: self.state.client.set(k, raw, px=ms))
