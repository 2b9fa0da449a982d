"""Two proxy replicas sharing one real `redis-server` (server.state: {backend: redis}):
one per-key budget across both (overshoot bounded by one request's maximum under 50
concurrent requests split between them), one set of search statistics, state that
outlives a replica, and a Redis that goes away answered by `on_state_error` without a stall."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator

import openai
import pytest

from bench.redis_server import RedisServer
from itsproxy.proxy.config import ConfigError, parse_config
from itsproxy.proxy.metering.budgets import key_id
from itsproxy.proxy.storage.redis_state import public_url
from itsproxy.proxy.telemetry.metrics import REGISTRY
from tests.conftest import sim_models

KEY = "sk-redis-test"
MSG = [{"role": "user", "content": "What is 17 + 25?"}]
MAX_TOKENS = 40  # above the simulator's chat answers (it does not cut chat at max_tokens)
BUDGET = 500
ONE_REQUEST_MAX = MAX_TOKENS + len('[{"role": "user", "content": "What is 17 + 25?"}]') // 3 + 1
STRINGS = ["Answer directly.", "Think step by step."]

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (Debian package redis-server; .ci/run installs it)")


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def _config(url: str, prefix: str, **budgets) -> dict:
    return {"routes": [
                {"name": "aug", "match": {"model": "aug"},
                 "generate": {"model": "sim", "n": 4, "temperature": 0.8, "augment": STRINGS,
                              "augment_search": {"policy": "ucb"}},
                 "select": [{"vote": {"extract": "number"}}]},
                {"name": "p", "match": {"model": "*"}, "generate": {"model": "slow"}, "passthrough": True}],
            "server": {"api_keys": [KEY], "state": {"backend": "redis", "url": url, "key_prefix": prefix}},
            # a generous store timeout: a loaded CI machine must not look like an outage (the outage test sets its own)
            "budgets": {"tokens_per_day": BUDGET, "state_timeout_s": 5.0, **budgets}}


def _replicas(make_proxy, sim, cfg: dict, count: int = 2) -> list:
    cfg = {**cfg, "model_list": sim_models(sim.url, slow="sim@latency_ms=300")}
    return [make_proxy(cfg, sim, api_key=KEY) for _ in range(count)]


async def _burst(urls: list[str], count: int) -> list[int | str]:
    """`count` requests at once, spread round-robin over the replicas; each one's status."""
    clients = [openai.AsyncOpenAI(base_url=u, api_key=KEY, max_retries=0, timeout=20) for u in urls]

    async def one(i: int) -> int | str:
        try:
            await clients[i % len(clients)].chat.completions.create(model="p", messages=MSG, max_tokens=MAX_TOKENS)
            return 200
        except openai.APIStatusError as exc:
            return f"{exc.status_code} {exc.body.get('code') if isinstance(exc.body, dict) else ''}"
    try:
        return list(await asyncio.gather(*(one(i) for i in range(count))))
    finally:
        for c in clients:
            await c.close()


def _usage(server: RedisServer, prefix: str) -> tuple[int, int]:
    rows = [server.client.hgetall(k) for k in server.client.keys(f"{prefix}budget:*:{key_id(KEY)}")]
    return sum(int(r.get("tokens", 0)) for r in rows), sum(int(r.get("reserved", 0)) for r in rows)


def test_two_replicas_share_one_budget_and_it_survives_a_restart(make_proxy, sim, redis_server) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    a, b = _replicas(make_proxy, sim, _config(redis_server.url, prefix))
    statuses = asyncio.run(_burst([a.handle.base_url, b.handle.base_url], 50))
    spent, reserved = _usage(redis_server, prefix)
    assert statuses.count(200) >= 2 and set(statuses) <= {200, "429 budget_reserved"}, statuses
    assert reserved == 0, "every reservation was settled"
    assert BUDGET // 40 <= spent <= BUDGET + ONE_REQUEST_MAX, (spent, statuses)
    # Spend the rest through one replica; the other (and a replica started afresh) then refuses too.
    with pytest.raises(openai.RateLimitError):
        for _ in range(60):
            a.client.chat.completions.create(model="p", messages=MSG, max_tokens=MAX_TOKENS)
    assert _usage(redis_server, prefix)[0] <= BUDGET + ONE_REQUEST_MAX
    a.stop()
    (fresh,) = _replicas(make_proxy, sim, _config(redis_server.url, prefix), 1)
    for replica in (b, fresh):
        with pytest.raises(openai.RateLimitError) as exc:
            replica.client.chat.completions.create(model="p", messages=MSG, max_tokens=MAX_TOKENS)
        assert exc.value.body["code"] == "budget_exceeded"


def test_two_replicas_share_search_statistics(make_proxy, sim, redis_server) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    a, b = _replicas(make_proxy, sim, _config(redis_server.url, prefix, tokens_per_day=10_000_000))
    for seed in range(3):
        a.client.chat.completions.create(model="aug", messages=MSG, seed=seed)
    seen_by_b = b.client.chat.completions.create(model="aug", messages=MSG, seed=9).model_extra["its"]["search"]
    assert sum(arm["pulls"] for arm in seen_by_b["arms"]) == 3 * 4, seen_by_b  # A's 3 requests x n=4
    (fresh,) = _replicas(make_proxy, sim, _config(redis_server.url, prefix, tokens_per_day=10_000_000), 1)
    seen_after = fresh.client.chat.completions.create(model="aug", messages=MSG, seed=10).model_extra["its"]["search"]
    assert sum(arm["pulls"] for arm in seen_after["arms"]) == 4 * 4


def _errors() -> float:
    return REGISTRY.get_sample_value("its_state_errors_total", {"store": "budgets"}) or 0.0


@pytest.mark.parametrize("policy", ["closed", "open"])
def test_redis_going_away_follows_the_policy_without_stalling(make_proxy, sim, redis_server, policy) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}:"
    a, b = _replicas(make_proxy, sim, _config(redis_server.url, prefix, on_state_error=policy, state_timeout_s=0.5))
    assert asyncio.run(_burst([a.handle.base_url, b.handle.base_url], 2)) == [200, 200]
    redis_server.stop()
    before = _errors()
    statuses = asyncio.run(_burst([a.handle.base_url, b.handle.base_url], 30))  # 20 s client timeout: no stall
    expected = 200 if policy == "open" else "503 state_unavailable"
    assert statuses == [expected] * 30, statuses
    assert _errors() - before >= 2  # at least once per replica
    search = a.client.chat.completions.create(model="aug", messages=MSG, seed=1) if policy == "open" else None
    if search is not None:  # search statistics are best-effort: the request proceeds on what is known
        assert search.model_extra["its"]["search"]["error"].startswith("state unavailable")


@pytest.mark.parametrize("state, budgets, where, why", [
    ({"backend": "redis"}, None, "server.state.url", "needs a url"),
    ({"backend": "sqlite", "url": "redis://x"}, None, "server.state.url", "only for backend: redis"),
    ({"backend": "redis", "url": "http://x"}, None, "server.state.url", "redis://"),
    ({"backend": "memcached"}, None, "server.state.backend", "sqlite"),
    ({"backend": "redis", "url": "redis://x", "ttl": 3}, None, "server.state.ttl", "."),
    ({"backend": "redis", "url": "redis://x"}, {"tokens_per_day": 5, "path": "b.sqlite3"}, "budgets.path", "Redis"),
])
def test_state_config_is_checked_whole_at_load(sim, state, budgets, where, why) -> None:
    cfg = {"model_list": sim_models(sim.url), "routes": [], "server": {"state": state}}
    if budgets:
        cfg["budgets"] = budgets
    with pytest.raises(ConfigError, match=why) as exc:
        parse_config(cfg)
    assert where in str(exc.value)


def test_a_redis_password_is_a_secret(sim) -> None:
    url = "redis://user:hunter2-redis@127.0.0.1:1/0"
    config = parse_config({"model_list": sim_models(sim.url), "routes": [],
                           "server": {"state": {"backend": "redis", "url": url}}})
    assert "hunter2-redis" in config.secrets
    assert public_url(url) == "redis://user:***@127.0.0.1:1/0"
