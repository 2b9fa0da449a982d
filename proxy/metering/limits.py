"""Requests and tokens per minute (rpm / tpm), for API keys and for deployments, over a
sliding 60 s window, behind one small interface so several replicas can share them.

`Limiter.take(name, rate)` counts one request against `name` if it is under both
limits (requests in the window < rpm, tokens metered in the window < tpm) and returns 0,
else returns the seconds until it would be (nothing counted). `Limiter.spend` adds the
tokens a request or call really metered: tpm is checked before a call and charged with
what was settled after it, so a window can pass tpm by at most the calls in flight.

`LocalLimiter` (default) keeps the window in process memory; `RedisLimiter`
(storage/redis_state.py, when `server.state.backend: redis`) keeps it in Redis sorted
sets, checked and added in one Lua script, so replicas share one window.

`RateLimits` is what the request path uses: it names the windows (`key:<id>`,
`deployment:<id>`) and applies `on_state_error` when the shared store cannot answer
within its timeout: one log line per outage, `its_state_errors_total{store="limits"}`,
then the policy (open: admit uncounted; closed: refuse with Retry-After).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from itsproxy.proxy.metering.budget_stores import StateError
from itsproxy.proxy.telemetry.metrics import STATE_ERRORS

log = logging.getLogger(__name__)
T = TypeVar("T")
WINDOW_S = 60.0
STORE = "limits"  # the `store` label of its_state_errors_total
DOWN_FOR_S = 2.0  # after a state error the policy answers alone this long


@dataclass(frozen=True)
class Rate:
    rpm: int | None = None
    tpm: int | None = None

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None


class Limiter(abc.ABC):
    @abc.abstractmethod
    async def take(self, name: str, rate: Rate) -> float:
        """Count one request if `name` is under `rate`: 0.0; else seconds until it would be."""

    @abc.abstractmethod
    async def spend(self, name: str, tokens: int) -> None:
        """Add `tokens` metered now to `name`'s tpm window."""

    async def aclose(self) -> None:
        return None


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)

    def trim(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.tokens.popleft()

    def wait(self, rate: Rate, now: float) -> float:
        waits = [0.0]
        if rate.rpm is not None and len(self.requests) >= rate.rpm:
            waits.append(self.requests[len(self.requests) - rate.rpm] + WINDOW_S - now)
        if rate.tpm is not None:
            used = sum(t for _, t in self.tokens)
            for at, t in self.tokens:  # the oldest leave the window first
                if used < rate.tpm:
                    break
                used -= t
                waits.append(at + WINDOW_S - now)
        return max(waits)


class LocalLimiter(Limiter):
    """One process's windows. Async-safe without locks: nothing here awaits."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.windows: dict[str, _Window] = {}

    def _window(self, name: str) -> tuple[_Window, float]:
        now = self.clock()
        w = self.windows.setdefault(name, _Window())
        w.trim(now)
        return w, now

    def take_now(self, name: str, rate: Rate) -> float:
        w, now = self._window(name)
        wait = w.wait(rate, now)
        if wait <= 0:
            w.requests.append(now)
        return wait

    def spend_now(self, name: str, tokens: int) -> None:
        if tokens > 0:
            w, now = self._window(name)
            w.tokens.append((now, tokens))

    async def take(self, name: str, rate: Rate) -> float:
        return self.take_now(name, rate)

    async def spend(self, name: str, tokens: int) -> None:
        self.spend_now(name, tokens)


class Refused(Exception):
    """Over a limit (or the store is down under `closed`): retry after `retry_after_s`."""

    def __init__(self, retry_after_s: float, down: bool = False) -> None:
        super().__init__(f"retry after {retry_after_s:.1f}s")
        self.retry_after_s, self.down = retry_after_s, down


class RateLimits:
    """The limiter as the request path uses it: named windows and the `on_state_error` policy."""

    def __init__(self, limiter: Limiter, *, on_state_error: str = "closed", timeout_s: float = 0.5) -> None:
        self.limiter, self.policy, self.timeout_s = limiter, on_state_error, timeout_s
        self._down_until = 0.0
        self._spending: set[asyncio.Task[None]] = set()

    async def _ask(self, op: Callable[[], Awaitable[T]]) -> T:
        if time.monotonic() < self._down_until:
            STATE_ERRORS.labels(STORE).inc()
            raise StateError(STORE, "down (recent error)")
        try:
            result = await asyncio.wait_for(op(), self.timeout_s + 0.25)
        except (StateError, TimeoutError) as exc:
            STATE_ERRORS.labels(STORE).inc()
            if self._down_until == 0.0:  # one line per outage
                log.error("rate limit store failed (%s); applying on_state_error=%s until it answers",
                          str(exc) or f"no answer within {self.timeout_s:g}s", self.policy)
            self._down_until = time.monotonic() + DOWN_FOR_S
            raise StateError(STORE, str(exc)) from None
        if self._down_until:
            log.warning("rate limit store answers again")
            self._down_until = 0.0
        return result

    async def take(self, name: str, rate: Rate) -> None:
        """Count one request against `name`, or raise Refused."""
        if not rate.limited:
            return
        try:
            wait = await self._ask(lambda: self.limiter.take(name, rate))
        except StateError:
            if self.policy == "open":
                return
            raise Refused(DOWN_FOR_S, down=True) from None
        if wait > 0:
            raise Refused(wait)

    async def spend(self, name: str, tokens: int) -> None:
        """Charge metered tokens; never raises (a store that cannot take them is counted and logged)."""
        if tokens <= 0:
            return
        try:
            await self._ask(lambda: self.limiter.spend(name, tokens))
        except StateError:
            pass

    def spend_later(self, name: str, tokens: int) -> None:
        """`spend` from synchronous code (a deployment lease ending): a task, held until done."""
        if tokens <= 0:
            return
        if isinstance(self.limiter, LocalLimiter):
            self.limiter.spend_now(name, tokens)
            return
        task = asyncio.ensure_future(self.spend(name, tokens))
        self._spending.add(task)
        task.add_done_callback(self._spending.discard)

    async def aclose(self) -> None:
        if self._spending:
            await asyncio.gather(*self._spending, return_exceptions=True)
        await self.limiter.aclose()
