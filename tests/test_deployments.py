"""Choosing among a model's deployments: shuffle weights, cooldowns, rpm/tpm windows (fake clock, seeded)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from itsproxy.proxy.config import Deployment, ModelEntry, RouterSettings
from itsproxy.proxy.upstream.deployments import Balancer, Cooldowns, Lease, NoDeployment, shares, shuffle_pick


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def dep(i: int, **kw) -> Deployment:
    return Deployment(id=f"m#{i}", model="openai/x", params={"api_base": f"http://127.0.0.1:{9000 + i}/v1"}, **kw)


def entry(*deployments: Deployment) -> ModelEntry:
    return ModelEntry("m", list(deployments))


def acq(b: Balancer, e: ModelEntry, exclude: list[str] | set[str] = ()) -> Lease:
    """acquire, from a synchronous test (the local limiter never awaits)."""
    return asyncio.run(b.acquire(e, exclude))


def balancer(settings: RouterSettings | None = None) -> tuple[Balancer, Clock]:
    clock = Clock()
    return Balancer(settings, rng=random.Random(7), clock=clock), clock


def test_shares_prefer_weight_then_rpm_then_tpm():
    assert shares([dep(0), dep(1)]) == [1.0, 1.0]
    assert shares([dep(0, weight=3), dep(1, weight=1, rpm=100)]) == [3.0, 1.0]
    assert shares([dep(0, rpm=10), dep(1, rpm=30), dep(2)]) == [10.0, 30.0, 20.0]  # missing: the average
    assert shares([dep(0, tpm=1000), dep(1, tpm=3000)]) == [1000.0, 3000.0]


def test_shuffle_follows_weights():
    rng = random.Random(1)
    ds = [dep(0, weight=1), dep(1, weight=3)]
    counts = Counter(shuffle_pick(ds, rng).id for _ in range(4000))
    assert 0.70 < counts["m#1"] / 4000 < 0.80
    counts = Counter(shuffle_pick([dep(0), dep(1)], rng).id for _ in range(4000))
    assert 0.45 < counts["m#0"] / 4000 < 0.55


def test_cooldown_after_more_than_allowed_fails_within_a_minute():
    c = Cooldowns(allowed_fails=2, cooldown_s=10)
    for t in (0.0, 1.0):
        c.failed("a", t)
    assert c.cooling("a", 1.0) == 0
    c.failed("a", 2.0)
    assert c.cooling("a", 2.0) == 10 and c.cooling("a", 11.9) > 0 and c.cooling("a", 12.0) == 0
    # failures older than a minute do not add up
    for t in (100.0, 161.0, 222.0):
        c.failed("b", t)
    assert c.cooling("b", 222.0) == 0
    c.failed("c", 5.0, at_once=True)  # a 429
    assert c.cooling("c", 5.0) == 10


def test_acquire_skips_cooling_and_excluded_deployments():
    b, clock = balancer(RouterSettings(allowed_fails=0, cooldown_time_s=5))
    e = entry(dep(0), dep(1))
    lease = acq(b, e)
    lease.done(failed=True)  # allowed_fails 0: the first failure cools it down
    other = {d.id for d in e.deployments} - {lease.deployment.id}
    assert {acq(b, e).deployment.id for _ in range(20)} == other
    with pytest.raises(NoDeployment) as exc:
        acq(b, e, exclude=other)
    assert exc.value.retry_after_s == pytest.approx(5)
    clock.now += 5
    assert acq(b, e, exclude=other).deployment.id == lease.deployment.id
    with pytest.raises(NoDeployment) as exc:
        acq(b, e, exclude=["m#0", "m#1"])
    assert exc.value.retry_after_s is None  # everything tried: waiting will not help


def test_rpm_window_slides():
    b, clock = balancer()
    e = entry(dep(0, rpm=10))
    for _ in range(10):
        acq(b, e).done(tokens=5)
        clock.now += 1  # calls at t=0..9
    with pytest.raises(NoDeployment) as exc:
        acq(b, e)
    assert exc.value.retry_after_s == pytest.approx(50)  # the first call leaves the window at t=60
    clock.now += 50
    acq(b, e)
    with pytest.raises(NoDeployment):
        acq(b, e)


def test_rpm_overflow_goes_to_the_other_deployment():
    b, _ = balancer()
    e = entry(dep(0, rpm=2), dep(1, rpm=1000))
    picked = Counter(acq(b, e).deployment.id for _ in range(50))
    assert picked["m#0"] <= 2 and picked["m#1"] >= 48


def test_tpm_is_checked_before_a_call_and_counts_what_was_metered():
    b, clock = balancer()
    e = entry(dep(0, tpm=1000))
    first = acq(b, e)
    acq(b, e).done(tokens=0)  # nothing metered yet: the window is still open
    first.done(tokens=600)
    second = acq(b, e)  # 600 < 1000: admitted
    second.done(tokens=500)  # the metered tokens may pass tpm (checked before the call)
    with pytest.raises(NoDeployment) as exc:
        acq(b, e)
    assert exc.value.retry_after_s == pytest.approx(60)
    clock.now += 60
    acq(b, e)


def test_a_429_cools_down_at_once():
    b, _ = balancer(RouterSettings(allowed_fails=5, cooldown_time_s=30))
    e = entry(dep(0), dep(1))
    acq(b, e, exclude=["m#1"]).done(rate_limited=True)
    with pytest.raises(NoDeployment) as exc:
        acq(b, e, exclude=["m#1"])
    assert exc.value.retry_after_s == pytest.approx(30)


def test_done_counts_once():
    b, _ = balancer(RouterSettings(allowed_fails=1, cooldown_time_s=30))
    e = entry(dep(0), dep(1))
    lease = acq(b, e, exclude=["m#1"])
    lease.done(failed=True)
    lease.done(failed=True)
    acq(b, e, exclude=["m#1"])  # one failure only: not cooling
    acq(b, e, exclude=["m#1"]).done(failed=True)
    with pytest.raises(NoDeployment):
        acq(b, e, exclude=["m#1"])


def test_the_only_deployment_never_cools_down():
    b, _ = balancer(RouterSettings(allowed_fails=0, cooldown_time_s=30))
    e = entry(dep(0))
    for _ in range(5):
        acq(b, e).done(failed=True, rate_limited=True)
    assert acq(b, e).deployment.id == "m#0"


@pytest.mark.asyncio
async def test_concurrent_tasks_never_exceed_rpm():
    b, _ = balancer()
    e = entry(dep(0, rpm=10))
    got: list[str] = []

    async def call() -> None:
        await asyncio.sleep(0)
        try:
            lease = await b.acquire(e)
        except NoDeployment:
            return
        got.append(lease.deployment.id)
        await asyncio.sleep(0)
        lease.done(tokens=1)

    await asyncio.gather(*(call() for _ in range(50)))
    assert len(got) == 10
