"""Choosing among a model's deployments (LiteLLM's load balancing, in-process).

A `model_name` listed several times in model_list is one model with several
deployments. For each call, `Balancer.acquire` picks one:
  - never one that is cooling down (it failed more than `allowed_fails` times
    within a minute, or answered 429: no calls for `cooldown_time` seconds).
    As in LiteLLM, a model's only deployment never cools down: there is nowhere
    else to send the call, and its own errors say more than a local 429 would;
  - never one whose `rpm` / `tpm` budget for the last 60 s is used up (the call
    reserves its request and estimated tokens at once; `Lease.done` corrects the tokens);
  - among the rest, at random ("simple-shuffle"), weighted by `weight`, else
    `rpm`, else `tpm` (the first of these any deployment sets; a deployment
    without it gets the average of those with it), else uniformly.
When none is available, `NoDeployment.retry_after_s` says when one will be.

Async-safe without locks: acquire/done never await, so on one event loop no two
tasks can take the same last slot. The state is per process: with W workers a
deployment can get up to W x rpm (LiteLLM shares it through Redis; we do not).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from itsproxy.proxy.config.model_list import Deployment, ModelEntry
from itsproxy.proxy.config.server import RouterSettings

WINDOW_S = 60.0  # rpm / tpm, and LiteLLM's allowed_fails, count over one minute


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
class _Use:
    at: float
    tokens: int


@dataclass
class RateWindows:
    """Requests and tokens per deployment over a sliding 60 s window."""

    uses: dict[str, deque[_Use]] = field(default_factory=dict)

    def _recent(self, deployment_id: str, now: float) -> deque[_Use]:
        recent = self.uses.setdefault(deployment_id, deque())
        while recent and recent[0].at <= now - WINDOW_S:
            recent.popleft()
        return recent

    def wait(self, d: Deployment, tokens: int, now: float) -> float:
        """Seconds until `d` may take a call of `tokens` more tokens (0: now)."""
        recent = self._recent(d.id, now)
        waits = [0.0]
        if d.rpm is not None and len(recent) >= d.rpm:
            waits.append(recent[len(recent) - d.rpm].at + WINDOW_S - now)
        if d.tpm is not None:
            used, need = sum(u.tokens for u in recent), min(tokens, d.tpm)
            for u in recent:  # the oldest uses leave the window first
                if used + need <= d.tpm:
                    break
                used -= u.tokens
                waits.append(u.at + WINDOW_S - now)
        return max(waits)

    def take(self, d: Deployment, tokens: int, now: float) -> _Use:
        use = _Use(now, tokens)
        self._recent(d.id, now).append(use)
        return use


@dataclass
class Lease:
    """One call's claim on a deployment. Report how it went with `done` (exactly once)."""

    deployment: Deployment
    use: _Use
    balancer: Balancer
    solo: bool = False  # the model's only deployment: never cooled down
    finished: bool = False

    def done(self, *, tokens: int | None = None, failed: bool = False, rate_limited: bool = False) -> None:
        """`tokens`: what the call really spent (replaces the estimate in the tpm window);
        `failed`: a retryable failure (counts toward cooldown); `rate_limited`: a 429 (cools down at once)."""
        if self.finished:
            return
        self.finished = True
        if tokens is not None:
            self.use.tokens = tokens
        if (failed or rate_limited) and not self.solo:
            self.balancer.cooldowns.failed(self.deployment.id, self.balancer.clock(), at_once=rate_limited)


class Balancer:
    """One per app: picks deployments, remembers cooldowns and per-minute use."""

    def __init__(self, settings: RouterSettings | None = None, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        settings = settings or RouterSettings()
        self.cooldowns = Cooldowns(settings.allowed_fails, settings.cooldown_time_s)
        self.windows = RateWindows()
        self.rng = rng or random.Random()
        self.clock = clock

    def acquire(self, entry: ModelEntry, tokens: int = 0, exclude: Iterable[str] = ()) -> Lease:
        """A deployment of `entry` for one call of about `tokens` tokens, or NoDeployment."""
        now = self.clock()
        skip = set(exclude)
        ready: list[Deployment] = []
        waits: list[float] = []
        for d in entry.deployments:
            if d.id in skip:
                continue
            wait = max(self.cooldowns.cooling(d.id, now), self.windows.wait(d, tokens, now))
            if wait > 0:
                waits.append(wait)
            else:
                ready.append(d)
        if not ready:
            raise NoDeployment(entry.name, min(waits) if waits else None)
        chosen = shuffle_pick(ready, self.rng)
        return Lease(chosen, self.windows.take(chosen, tokens, now), self, solo=len(entry.deployments) == 1)
