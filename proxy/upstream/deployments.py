"""Choosing among a model's deployments (LiteLLM's load balancing, in-process).

A `model_name` listed several times in model_list is one model with several
deployments. For each call, `Balancer.acquire` picks one:
  - never one that is cooling down (it failed more than `allowed_fails` times
    within a minute, or answered 429: no calls for `cooldown_time` seconds).
    As in LiteLLM, a model's only deployment never cools down: there is nowhere
    else to send the call, and its own errors say more than a local 429 would;
  - never one whose `rpm` / `tpm` for the last 60 s is used up (metering/limits.py: the
    call counts as a request at once; `Lease.done` charges the tokens it really spent, so
    tpm is checked before a call and counts what was metered);
  - among the rest, at random ("simple-shuffle"), weighted by `weight`, else
    `rpm`, else `tpm` (the first of these any deployment sets; a deployment
    without it gets the average of those with it), else uniformly.
When none is available, `NoDeployment.retry_after_s` says when one will be.

Cooldowns are per process. The rpm/tpm windows are the app's `RateLimits`: in process
memory by default (async-safe without locks: the local limiter never awaits), in Redis
when `server.state.backend: redis`, so replicas share one window per deployment (as
LiteLLM's router does). The limiter's Redis errors follow `on_state_error`.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from itsproxy.proxy.config.model_list import Deployment, ModelEntry
from itsproxy.proxy.config.server import RouterSettings
from itsproxy.proxy.metering.limits import WINDOW_S, LocalLimiter, Rate, RateLimits, Refused


class NoDeployment(Exception):
    """Every deployment of the model is cooling down, at its rpm/tpm limit, or already tried."""

    def __init__(self, model: str, retry_after_s: float | None) -> None:
        wait = f"; one frees up in {retry_after_s:.1f}s" if retry_after_s is not None else ""
        super().__init__(f"no deployment of {model!r} is available{wait}")
        self.model = model
        self.retry_after_s = retry_after_s  # None: nothing will free up (all tried)


def shares(deployments: Sequence[Deployment]) -> list[float]:
    """Each deployment's relative share of traffic (see the module docstring)."""
    for kind in ("weight", "rpm", "tpm"):
        given = [getattr(d, kind) for d in deployments if getattr(d, kind) is not None]
        if given:
            mean = sum(given) / len(given)
            return [float(getattr(d, kind)) if getattr(d, kind) is not None else mean for d in deployments]
    return [1.0] * len(deployments)


def shuffle_pick(deployments: Sequence[Deployment], rng: random.Random) -> Deployment:
    """simple-shuffle: one deployment at random, weighted by `shares`."""
    if len(deployments) == 1:
        return deployments[0]
    return rng.choices(list(deployments), weights=shares(deployments), k=1)[0]


@dataclass
class Cooldowns:
    """Failures per deployment over the last minute; more than `allowed_fails` cools it down."""

    allowed_fails: int = 3
    cooldown_s: float = 5.0
    failures: dict[str, deque[float]] = field(default_factory=dict)
    until: dict[str, float] = field(default_factory=dict)  # deployment id -> end of its cooldown

    def failed(self, deployment_id: str, now: float, *, at_once: bool = False) -> None:
        """Count a failure; `at_once` (a 429) cools the deployment down without counting."""
        recent = self.failures.setdefault(deployment_id, deque())
        recent.append(now)
        while recent and recent[0] <= now - WINDOW_S:
            recent.popleft()
        if at_once or len(recent) > self.allowed_fails:
            self.until[deployment_id] = now + self.cooldown_s
            recent.clear()

    def cooling(self, deployment_id: str, now: float) -> float:
        """Seconds of cooldown left (0: available)."""
        end = self.until.get(deployment_id)
        if end is None:
            return 0.0
        if end <= now:
            del self.until[deployment_id]
            return 0.0
        return end - now


@dataclass
class Lease:
    """One call's claim on a deployment. Report how it went with `done` (exactly once)."""

    deployment: Deployment
    balancer: Balancer
    solo: bool = False  # the model's only deployment: never cooled down
    finished: bool = False

    def done(self, *, tokens: int | None = None, failed: bool = False, rate_limited: bool = False) -> None:
        """`tokens`: what the call really spent (charged to the deployment's tpm window);
        `failed`: a retryable failure (counts toward cooldown); `rate_limited`: a 429 (cools down at once)."""
        if self.finished:
            return
        self.finished = True
        if tokens and self.deployment.tpm is not None:
            self.balancer.limits.spend_later(window(self.deployment), tokens)
        if (failed or rate_limited) and not self.solo:
            self.balancer.cooldowns.failed(self.deployment.id, self.balancer.clock(), at_once=rate_limited)


def window(d: Deployment) -> str:
    return f"deployment:{d.id}"


class Balancer:
    """One per app: picks deployments, remembers cooldowns and per-minute use."""

    def __init__(self, settings: RouterSettings | None = None, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic, limits: RateLimits | None = None) -> None:
        settings = settings or RouterSettings()
        self.cooldowns = Cooldowns(settings.allowed_fails, settings.cooldown_time_s)
        self.limits = limits or RateLimits(LocalLimiter(clock))
        self.rng = rng or random.Random()
        self.clock = clock

    async def acquire(self, entry: ModelEntry, exclude: Iterable[str] = ()) -> Lease:
        """A deployment of `entry` for one call, or NoDeployment."""
        now = self.clock()
        skip = set(exclude)
        ready: list[Deployment] = []
        waits: list[float] = []
        for d in entry.deployments:
            if d.id in skip:
                continue
            cooling = self.cooldowns.cooling(d.id, now)
            if cooling > 0:
                waits.append(cooling)
            else:
                ready.append(d)
        while ready:  # the shuffle's pick, unless its window is full: then another
            chosen = shuffle_pick(ready, self.rng)
            if chosen.rpm is None and chosen.tpm is None:  # no window to ask (the common case)
                return Lease(chosen, self, solo=len(entry.deployments) == 1)
            try:
                await self.limits.take(window(chosen), Rate(chosen.rpm, chosen.tpm))
            except Refused as exc:
                waits.append(exc.retry_after_s)
                ready.remove(chosen)
                continue
            return Lease(chosen, self, solo=len(entry.deployments) == 1)
        raise NoDeployment(entry.name, min(waits) if waits else None)
