"""rpm / tpm limits per API key (budgets: rpm_limit, tpm_limit) and per deployment (model_list
rpm / tpm), in one process and shared by two replicas through a real `redis-server`; a Redis that
goes away mid-run answered by `on_state_error` without a stall. Requests through the openai SDK,
upstream calls counted at the simulators."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from itsproxy.proxy.config import ConfigError, parse_config
from itsproxy.proxy.simulator import SimConfig
from itsproxy.proxy.simulator import serve_in_thread as serve_simulator
from itsproxy.proxy.telemetry.metrics import REGISTRY
from tests.conftest import KEY as SIM_KEY
from tests.conftest import sim_models
from tests.test_redis_state import RedisServer

KEY = "sk-limits-test"
MSG = [{"role": "user", "content": "What is 2 + 3?"}]
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def sims() -> Iterator[tuple]:
    a, b = serve_simulator(SimConfig(seed=11)), serve_simulator(SimConfig(seed=12))
    yield a, b
    a.stop()
    b.stop()


def served(sim) -> int:
    return httpx.get(f"{sim.url}/stats").json()["requests"]


def deployment(name: str, sim, **extra) -> dict:
    return {"model_name": name, "litellm_params": {"model": "openai/sim", "api_base": f"{sim.url}/v1",
                                                   "api_key": SIM_KEY, **extra}}


def config(url: str | None, budgets: dict | None = None, model_list: list | None = None, **state) -> dict:
    server: dict = {"api_keys": [KEY]}
    if url is not None:
        server["state"] = {"backend": "redis", "url": url, "key_prefix": f"t{uuid.uuid4().hex[:6]}:", **state}
    cfg: dict = {"routes": [{"name": "p", "match": {"model": "*"}, "generate": {"model": "sim"}, "passthrough": True}],
                 "server": server}
    if budgets is not None:
        cfg["budgets"] = {"state_timeout_s": 5.0, **budgets}
    if model_list is not None:
        cfg["model_list"] = model_list
        cfg["routes"] = []
    return cfg


def replicas(make_proxy, sim, cfg: dict, count: int = 2) -> list:
    return [make_proxy(cfg, sim, api_key=KEY) for _ in range(count)]


def ask(proxies: list, count: int, model: str = "sim") -> list:
    """`count` requests one after another, alternating replicas: 200 or the refusal."""
    out: list = []
    for i in range(count):
        try:
            proxies[i % len(proxies)].client.chat.completions.create(model=model, messages=MSG)
            out.append(200)
        except openai.APIStatusError as exc:
            out.append(exc)
    return out


def refused(results: list, status: int = 429, code: str = "rate_limit_exceeded") -> int:
    for r in results:
        if r != 200:
            assert r.status_code == status and r.body["code"] == code, r
            assert int(r.response.headers["retry-after"]) >= 1
    return sum(r != 200 for r in results)


def count_429() -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "its_requests" for s in m.samples
               if s.name == "its_requests_total" and s.labels["status"] == "429")


@needs_redis
def test_per_key_rpm_holds_across_replicas(make_proxy, sim, redis_server) -> None:
    proxies = replicas(make_proxy, sim, config(redis_server.url, {"rpm_limit": 10}))
    before = count_429()
    results = ask(proxies, 20)
    assert results[:10] == [200] * 10 and refused(results) == 10
    assert "10 requests per minute" in results[-1].message
    assert count_429() - before == 10


def test_per_key_rpm_in_one_process_and_per_key_override(make_proxy, sim) -> None:
    other = "sk-limits-other"
    cfg = config(None, {"rpm_limit": 3, "keys": {other: {"rpm_limit": None}}})
    cfg["server"]["api_keys"] = [KEY, other]
    (p,) = replicas(make_proxy, sim, cfg, 1)
    results = ask([p], 5)
    assert results[:3] == [200] * 3 and refused(results) == 2
    free = openai.OpenAI(base_url=p.handle.base_url, api_key=other, max_retries=0)
    for _ in range(5):  # null lifts the limit for that key
        free.chat.completions.create(model="sim", messages=MSG)


@needs_redis
def test_per_key_tpm_counts_metered_tokens_across_replicas(make_proxy, sim, redis_server) -> None:
    a, b = replicas(make_proxy, sim, config(redis_server.url, {"tpm_limit": 10}))
    first = a.client.chat.completions.create(model="sim", messages=MSG)
    assert first.usage.prompt_tokens >= 10  # one request's metered tokens fill the window
    results = ask([b, a], 2)
    assert refused(results) == 2
    assert "10 tokens per minute" in results[0].message


@needs_redis
def test_deployment_rpm_is_shared_and_the_router_uses_the_other(make_proxy, sims, redis_server) -> None:
    a, b = sims
    models = [deployment("lim", a, rpm=3, weight=1000), deployment("lim", b, weight=1)]
    proxies = replicas(make_proxy, a, config(redis_server.url, model_list=models))
    assert ask(proxies, 12, model="lim") == [200] * 12
    assert (served(a), served(b)) == (3, 9)  # per process it would have been up to 6 on a


@needs_redis
def test_every_deployment_at_its_limit_is_a_429_with_retry_after(make_proxy, sims, redis_server) -> None:
    a, b = sims
    models = [deployment("lim", a, rpm=2), deployment("lim", b, rpm=2)]
    proxies = replicas(make_proxy, a, config(redis_server.url, model_list=models))
    results = ask(proxies, 6, model="lim")
    assert results[:4] == [200] * 4
    assert refused(results, 429, "no_deployment_available") == 2
    assert served(a) + served(b) == 4


def test_deployment_tpm_in_one_process(make_proxy, sims) -> None:
    a, b = sims
    (p,) = replicas(make_proxy, a, config(None, model_list=[deployment("lim", a, tpm=10)]), 1)
    results = ask([p], 3, model="lim")  # the first call's metered tokens fill the window
    assert results[0] == 200 and refused(results, 429, "no_deployment_available") == 2
    assert served(a) == 1


def limit_errors() -> float:
    return REGISTRY.get_sample_value("its_state_errors_total", {"store": "limits"}) or 0.0


async def burst(urls: list[str], count: int) -> list:
    clients = [openai.AsyncOpenAI(base_url=u, api_key=KEY, max_retries=0, timeout=20) for u in urls]

    async def one(i: int):
        try:
            await clients[i % len(clients)].chat.completions.create(model="sim", messages=MSG)
            return 200
        except openai.APIStatusError as exc:
            return f"{exc.status_code} {exc.body.get('code')}"
    try:
        return list(await asyncio.gather(*(one(i) for i in range(count))))
    finally:
        for c in clients:
            await c.close()


@needs_redis
@pytest.mark.parametrize("policy", ["closed", "open"])
def test_redis_stopped_mid_run_follows_the_policy(make_proxy, sim, redis_server, policy) -> None:
    cfg = config(redis_server.url, {"rpm_limit": 1000, "on_state_error": policy, "state_timeout_s": 0.5})
    a, b = replicas(make_proxy, sim, cfg)
    urls = [a.handle.base_url, b.handle.base_url]
    assert asyncio.run(burst(urls, 4)) == [200] * 4
    redis_server.stop()
    before = limit_errors()
    statuses = asyncio.run(burst(urls, 20))  # a 20 s client timeout: a stall would fail here
    assert statuses == [200 if policy == "open" else "503 state_unavailable"] * 20, statuses
    assert limit_errors() - before >= 2


@pytest.mark.parametrize("value", [0, "ten", 1.5])
def test_limits_are_checked_at_load(sim, value) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"model_list": sim_models(sim.url), "routes": [],
                      "budgets": {"keys": {"sk-x": {"rpm_limit": value}}}})
    assert "budgets.keys[0].rpm_limit" in str(exc.value)
