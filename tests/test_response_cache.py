"""The response cache (route `cache: {ttl_s}`): a verified answer stored by one replica is served
by the other through Redis with no upstream call (counted at the simulator), streamed or not;
an unverified answer is never stored; the local LRU does the same in one process; a route that
cannot verify is refused at load."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import openai
import pytest

from itsproxy.proxy.config import ConfigError, parse_config
from itsproxy.proxy.simulator import questions
from itsproxy.proxy.telemetry.metrics import REGISTRY
from tests.conftest import sim_models
from tests.test_redis_state import RedisServer

ARITH = {"python": "itsproxy.proxy.demo_checks:check_sum"}
NEVER = {"regex": "^never matches$"}


def route(name: str, check: dict = ARITH, ttl: float = 60) -> dict:
    return {"name": name, "match": {"model": name}, "generate": {"model": "sim", "n": 3, "temperature": 0.8},
            "select": [{"check": check}, {"vote": {"extract": "number"}}], "repair": {"rounds": 2},
            "on_unverified": "best_effort", "limits": {"timeout_s": 30}, "cache": {"ttl_s": ttl}}


def config(url: str | None = None) -> dict:
    cfg: dict = {"routes": [route("cached"), route("unchecked", NEVER)]}
    if url is not None:
        cfg["server"] = {"state": {"backend": "redis", "url": url, "key_prefix": f"t{uuid.uuid4().hex[:6]}:"}}
    return cfg


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def upstream_requests(p) -> int:
    return p.sim_stats()["requests"]


def ask(p, model: str, q: str, **kw):
    return p.client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": q}], seed=3, **kw)


def verified_question(p) -> str:
    """A seeded question the route verifies (its answer is then cached)."""
    for q, _ in questions(seed=21, count=20):
        if ask(p, "cached", q).parse().model_extra["its"].get("verified") is True:
            return q
    pytest.fail("no question was verified")


def cache_count(result: str) -> float:
    return REGISTRY.get_sample_value("its_cache_total", {"route": "cached", "result": result}) or 0.0


def test_a_verified_answer_is_served_by_the_other_replica_without_upstream_calls(
        make_proxy, fresh_sim, redis_server) -> None:
    cfg = config(redis_server.url)  # one key prefix: the replicas share one cache
    a, b = (make_proxy(cfg, fresh_sim) for _ in range(2))
    q = verified_question(a)
    first = ask(a, "cached", q).parse()  # stored by the search above: a hit on A too
    before, hits = upstream_requests(a), cache_count("hit")
    raw = ask(b, "cached", q, user="someone-else")  # `user` does not change the answer: same key
    hit = raw.parse()
    assert upstream_requests(b) == before, "a hit makes no upstream call"
    assert raw.headers["x-its-cache"] == "hit" and raw.headers["x-its-verified"] == "true"
    its = hit.model_extra["its"]
    assert its["cache"]["hit"] is True and its["cache"]["saved_tokens"] > 0 and its["cache"]["age_s"] >= 0
    assert hit.usage.total_tokens == 0  # honest: the upstream served nothing for this request
    assert hit.choices[0].message.content == first.choices[0].message.content
    assert cache_count("hit") - hits == 1

    # streamed, on the other replica: the same answer, the same evidence, still no upstream call
    raw_stream = b.client.chat.completions.with_raw_response.create(
        model="cached", messages=[{"role": "user", "content": q}], seed=3, stream=True,
        stream_options={"include_usage": True})
    assert raw_stream.headers["x-its-cache"] == "hit"
    chunks = list(raw_stream.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content
    assert chunks[-1].model_extra["its"]["cache"]["hit"] is True and chunks[-1].usage.total_tokens == 0
    assert upstream_requests(b) == before

    # a parameter that changes the answer is another key: a miss
    ask(b, "cached", q, temperature=0.1)
    assert upstream_requests(b) > before


def test_an_unverified_answer_is_never_cached(make_proxy, fresh_sim, redis_server) -> None:
    cfg = config(redis_server.url)  # one key prefix: the replicas share one cache
    a, b = (make_proxy(cfg, fresh_sim) for _ in range(2))
    q = "What is 2 + 3?"
    first = ask(a, "unchecked", q)
    assert first.parse().model_extra["its"]["verified"] is False
    before = upstream_requests(a)
    again = ask(b, "unchecked", q)
    assert upstream_requests(b) > before and "x-its-cache" not in again.headers
    assert "cache" not in again.parse().model_extra["its"]


def test_local_cache_in_one_process(make_proxy, fresh_sim) -> None:
    p = make_proxy(config(), fresh_sim)
    q = verified_question(p)
    before = upstream_requests(p)
    raw = ask(p, "cached", q)
    assert raw.headers["x-its-cache"] == "hit" and upstream_requests(p) == before
    ask(p, "unchecked", "What is 2 + 3?")
    mid = upstream_requests(p)
    ask(p, "unchecked", "What is 2 + 3?")
    assert upstream_requests(p) > mid


@pytest.mark.parametrize("extra, why", [
    ({"select": [{"vote": {"extract": "number"}}], "repair": None}, "no `check` stage"),
    ({"cache": {"ttl_s": 0}}, "cache.ttl_s"),
    ({"cache": {"ttl": 5}}, "cache.ttl"),
    ({"cache": {}}, "is required"),
])
def test_cache_config_is_checked_at_load(sim, extra, why) -> None:
    r = {**route("r"), **extra}
    with pytest.raises(ConfigError, match=why) as exc:
        parse_config({"model_list": sim_models(sim.url), "routes": [r]})
    assert "routes[0].cache" in str(exc.value)


def test_openai_sdk_sees_an_ordinary_completion_on_a_hit(make_proxy, fresh_sim) -> None:
    p = make_proxy(config(), fresh_sim)
    q = verified_question(p)
    hit = p.client.chat.completions.create(model="cached", messages=[{"role": "user", "content": q}], seed=3)
    assert isinstance(hit, openai.types.chat.ChatCompletion) and hit.choices[0].finish_reason


def test_completions_share_the_cache_path(make_proxy, fresh_sim) -> None:
    p = make_proxy(config(), fresh_sim)
    for q, _ in questions(seed=21, count=20):
        first = p.client.completions.with_raw_response.create(model="cached", prompt=q, seed=3, max_tokens=64)
        if first.parse().model_extra["its"].get("verified") is True:
            break
    else:
        pytest.fail("no question was verified")
    before = upstream_requests(p)
    again = p.client.completions.with_raw_response.create(model="cached", prompt=q, seed=3, max_tokens=64)
    assert again.headers["x-its-cache"] == "hit" and upstream_requests(p) == before
    assert again.parse().choices[0].text == first.parse().choices[0].text
    assert again.parse().model_extra["its"]["cache"]["hit"] is True
