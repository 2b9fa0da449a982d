"""Deployments of one model_name over two real simulators: failover, cooldown, rpm enforced."""

from __future__ import annotations

import httpx
import openai
import pytest

from conftest import KEY
from itsproxy.proxy.simulator import SimConfig
from itsproxy.proxy.simulator import serve_in_thread as serve_simulator

ASK = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture
def two_sims():
    broken = serve_simulator(SimConfig(seed=5, fail_rate=1.0, fail_status=503))
    healthy = serve_simulator(SimConfig(seed=6))
    yield broken, healthy
    broken.stop()
    healthy.stop()


def deployment(name: str, sim, **extra) -> dict:
    return {"model_name": name, "litellm_params": {"model": "openai/sim", "api_base": f"{sim.url}/v1",
                                                   "api_key": KEY, **extra}}


def requests_served(sim) -> int:
    return httpx.get(f"{sim.url}/stats").json()["requests"]


def test_failover_and_cooldown(make_proxy, two_sims):
    broken, healthy = two_sims
    p = make_proxy({"model_list": [deployment("duo", broken), deployment("duo", healthy)],
                    "router_settings": {"allowed_fails": 1, "cooldown_time": 600}}, healthy)
    for stream in (False, True) * 5:
        if stream:
            chunks = list(p.client.chat.completions.create(model="duo", messages=ASK, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            assert p.client.chat.completions.create(model="duo", messages=ASK).choices[0].message.content
    assert requests_served(healthy) == 10
    assert 1 <= requests_served(broken) <= 2  # cooled down after its second failure within the minute


def test_rpm_is_enforced_across_deployments(make_proxy, two_sims):
    _, healthy = two_sims
    p = make_proxy({"model_list": [deployment("lim", healthy, rpm=4), deployment("lim", healthy, rpm=6)]}, healthy)
    for _ in range(10):
        p.client.chat.completions.create(model="lim", messages=ASK)
    with pytest.raises(openai.RateLimitError) as exc:
        p.client.chat.completions.create(model="lim", messages=ASK)
    assert exc.value.status_code == 429
    assert requests_served(healthy) == 10  # the 11th never reached an upstream
