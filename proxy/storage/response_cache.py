"""The response cache (`cache: {ttl_s: N}` on a route): a verified answer, served again to the
same request without any upstream call.

Opt-in per route, and only for routes with a `check` stage: a cached answer is served without
its evidence being re-examined, so only a selection a sound checker verified is stored
(`selection.verified is True`); an unverified or unchecked answer never is.

The key is the route plus the request normalised: canonical JSON (sorted keys, no
whitespace) of the messages (or the completions prompt), the client's parameters and n,
per-request `its` adjustments, echo and text logprobs. Left out, because they change how the
answer is delivered, not what it is: `stream`, `stream_options` (include_usage), `user`,
`metadata`, `store`. It is hashed (SHA-256), so no prompt sits in a key.

Stores: `LocalCache` (default), an LRU bounded by entries and bytes, in process memory;
`RedisCache` when `server.state.backend: redis`, shared by replicas, each entry expiring
after the route's ttl_s. A cache is best-effort: a Redis error is a miss (or a skipped
store), counted in `its_state_errors_total{store="cache"}` and logged once per outage;
it never refuses a request.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from itsproxy.proxy.metering.budget_stores import StateError
from itsproxy.proxy.telemetry.metrics import REGISTRY, STATE_ERRORS
from itsproxy.strategies.types import Candidate, Sample, Selection

log = logging.getLogger(__name__)
# How the answer is delivered, not what it is: left out of the key (of the request and of its params).
EXCLUDED = frozenset({"stream", "stream_options", "include_usage", "native", "user", "metadata", "store"})
MAX_ENTRIES = 10_000
MAX_BYTES = 64 * 1024 * 1024
CACHE = Counter("its_cache_total", "Response cache lookups and stores, by route and result (hit, miss, store).",
                ["route", "result"], registry=REGISTRY)


def request_key(route: str, request: dict[str, Any]) -> str:
    """The cache key of `request` (a surface's call as a dict) on `route`."""
    params = {k: v for k, v in (request.get("params") or {}).items() if k not in EXCLUDED}
    canonical = json.dumps({**{k: v for k, v in request.items() if k not in EXCLUDED}, "params": params,
                            "route": route}, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Entry:
    """A verified answer: the choices the client got (best first), and what producing them metered."""

    choices: list[dict[str, Any]]  # {"message", "finish_reason", "model", "logprobs"}
    strategy: str
    saved_tokens: int
    stored_at: float  # unix seconds

    @classmethod
    def of(cls, ranked: list[Candidate], strategy: str, spent_tokens: int) -> Entry:
        return cls([{"message": c.sample.message, "finish_reason": c.sample.finish_reason,
                     "model": c.sample.model, "logprobs": c.sample.logprobs} for c in ranked],
                   strategy, spent_tokens, time.time())

    def dumps(self) -> str:
        return json.dumps({"choices": self.choices, "strategy": self.strategy, "saved_tokens": self.saved_tokens,
                           "stored_at": self.stored_at}, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str) -> Entry | None:
        """None for anything that is not an entry this version wrote (a miss, never an error)."""
        try:
            d = json.loads(raw)
            choices = d["choices"]
            ok = (isinstance(choices, list) and choices and all(isinstance(c, dict) and isinstance(
                c.get("message"), dict) for c in choices))
            if not ok:
                return None
            return cls(choices, str(d["strategy"]), int(d["saved_tokens"]), float(d["stored_at"]))
        except (ValueError, KeyError, TypeError):
            return None

    def selection(self) -> Selection:
        """The cached answer as a selection: verified, its choices costing nothing this time."""
        cands = [Candidate(i, Sample(c["message"], c.get("finish_reason"), str(c.get("model") or ""), -1,
                                     logprobs=c.get("logprobs")))
                 for i, c in enumerate(self.choices)]
        return Selection(cands[0], cands, self.strategy, verified=True, reasons=["served from the response cache"])

    def its(self) -> dict[str, Any]:
        age = round(max(0.0, time.time() - self.stored_at), 3)
        return {"hit": True, "saved_tokens": self.saved_tokens, "age_s": age}


class ResponseCache(abc.ABC):
    @abc.abstractmethod
    async def get(self, key: str) -> Entry | None: ...

    @abc.abstractmethod
    async def put(self, key: str, entry: Entry, ttl_s: float) -> None: ...


class LocalCache(ResponseCache):
    """An LRU in process memory, bounded by entries and by bytes of stored JSON."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.items: OrderedDict[str, tuple[float, str]] = OrderedDict()  # key -> (expires, json)
        self.bytes = 0

    async def get(self, key: str) -> Entry | None:
        item = self.items.get(key)
        if item is None:
            return None
        if item[0] <= time.monotonic():
            self._drop(key)
            return None
        self.items.move_to_end(key)
        return Entry.loads(item[1])

    async def put(self, key: str, entry: Entry, ttl_s: float) -> None:
        raw = entry.dumps()
        if len(raw) > self.max_bytes:
            return
        if key in self.items:
            self._drop(key)
        self.items[key] = (time.monotonic() + ttl_s, raw)
        self.bytes += len(raw)
        while len(self.items) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self.items)))

    def _drop(self, key: str) -> None:
        _, raw = self.items.pop(key)
        self.bytes -= len(raw)


class Lookups:
    """The cache as the request path uses it: keyed per route, counted, and best-effort."""

    def __init__(self, store: ResponseCache) -> None:
        self.store = store
        self._failing = False

    async def get(self, route: str, key: str) -> Entry | None:
        try:
            entry = await self.store.get(key)
        except StateError as exc:
            self._failed(exc)
            entry = None
        else:
            self._failing = False
        CACHE.labels(route, "hit" if entry is not None else "miss").inc()
        return entry

    async def put(self, route: str, key: str, entry: Entry, ttl_s: float) -> None:
        try:
            await self.store.put(key, entry, ttl_s)
        except StateError as exc:
            self._failed(exc)
            return
        CACHE.labels(route, "store").inc()

    def _failed(self, exc: StateError) -> None:
        STATE_ERRORS.labels("cache").inc()
        if not self._failing:
            log.error("response cache unavailable (%s); serving without it until it answers", exc)
        self._failing = True
