"""Per API key daily budgets (proxy/budgets.py), driven as a service (no HTTP)."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import threading
from datetime import UTC, datetime

import pytest

from itsproxy.proxy.config_fields import ConfigError
from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.http.auth import client_key
from itsproxy.proxy.metering.budgets import (
    ANONYMOUS,
    BudgetConfig,
    BudgetLimits,
    Budgets,
    MemoryBudgetStore,
    SqliteBudgetStore,
    StateError,
    build_budgets,
    key_id,
    parse_budgets,
)

NOW = datetime(2024, 5, 1, 21, 0, 0, tzinfo=UTC)  # 3 h before the UTC day ends


class Clock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def budgets(raw: dict, store=None, *, auth: bool = True, clock: Clock | None = None) -> Budgets:
    return Budgets(parse_budgets(raw), store or MemoryBudgetStore(), auth_enabled=auth, now=clock or Clock())


@pytest.mark.asyncio
async def test_over_limit_is_429_with_retry_after_and_a_clear_message():
    b = budgets({"tokens_per_day": 100})
    await b.charge("sk-a", 99, None)
    await b.check("sk-a")  # under the limit: passes
    await b.charge("sk-a", 1, None)
    with pytest.raises(ApiError) as exc:
        await b.check("sk-a")
    err = exc.value
    assert (err.status, err.code, err.type, err.retry) == (429, "budget_exceeded", "rate_limit_error", False)
    assert err.headers == {"Retry-After": str(3 * 3600)}
    assert "tokens_per_day" in err.message and "100 of 100 tokens" in err.message
    assert "resets at 00:00 UTC, in 3h 00m" in err.message
    assert err.extra["resets_at"] == "2024-05-02T00:00:00Z"
    resp = err.response()
    assert resp.status_code == 429 and resp.headers["retry-after"] == "10800"
    assert b'"code":"budget_exceeded"' in resp.body


@pytest.mark.asyncio
async def test_other_keys_unaffected_and_budget_resets_next_utc_day():
    clock = Clock()
    b = budgets({"tokens_per_day": 100}, clock=clock)
    await b.charge("sk-a", 150, None)
    await b.check("sk-b")
    with pytest.raises(ApiError):
        await b.check("sk-a")
    clock.now = datetime(2024, 5, 2, 0, 0, 1, tzinfo=UTC)
    await b.check("sk-a")


@pytest.mark.asyncio
async def test_cost_budget_and_unknown_cost():
    b = budgets({"cost_usd_per_day": 0.5})
    await b.charge("sk-a", 10, None)  # unknown price: only tokens count
    await b.check("sk-a")
    for _ in range(50):
        await b.charge("sk-a", 1, 0.01)
    with pytest.raises(ApiError) as exc:
        await b.check("sk-a")
    assert "cost_usd_per_day" in exc.value.message and "$0.5000 of $0.50" in exc.value.message


@pytest.mark.asyncio
async def test_per_key_override_env_reference_and_lifted_limit(monkeypatch):
    monkeypatch.setenv("TEAM_KEY", "sk-team")
    b = budgets({"tokens_per_day": 10, "cost_usd_per_day": 1.0,
                 "keys": {"sk-big": {"tokens_per_day": 1000}, "os.environ/TEAM_KEY": {"tokens_per_day": None}}})
    assert b.limits("sk-big") == BudgetLimits(1000, 1.0)  # the cost limit is inherited
    assert b.limits("sk-team") == BudgetLimits(None, 1.0)
    for key in ("sk-small", "sk-big", "sk-team"):
        await b.charge(key, 500, 0.0)
    with pytest.raises(ApiError):
        await b.check("sk-small")
    await b.check("sk-big")
    await b.check("sk-team")


@pytest.mark.asyncio
async def test_without_auth_every_request_is_anonymous():
    b = budgets({"tokens_per_day": 10}, auth=False)
    assert b.key_id("sk-anything") == b.key_id(None) == ANONYMOUS
    await b.charge("sk-one", 10, None)
    with pytest.raises(ApiError):
        await b.check("sk-other")  # a made-up bearer token must not buy a fresh budget
    assert budgets({"tokens_per_day": 10}).key_id(None) == ANONYMOUS


@pytest.mark.asyncio
async def test_sqlite_survives_restart_and_stores_no_key_in_clear(tmp_path):
    path = str(tmp_path / "state" / "budgets.sqlite3")
    b = budgets({"tokens_per_day": 100}, SqliteBudgetStore(path))
    await b.charge("sk-secret-key-1234", 60, 0.25)
    await b.aclose()
    b2 = budgets({"tokens_per_day": 100}, SqliteBudgetStore(path))
    await b2.charge("sk-secret-key-1234", 40, 0.25)
    assert await b2.store.spent(key_id("sk-secret-key-1234"), "2024-05-01") == (100, 0.5)
    with pytest.raises(ApiError):
        await b2.check("sk-secret-key-1234")
    await b2.aclose()
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT key_id, day FROM spend").fetchall()
    conn.close()
    assert rows == [(key_id("sk-secret-key-1234"), "2024-05-01")]
    for f in tmp_path.joinpath("state").iterdir():
        assert b"sk-secret-key-1234" not in f.read_bytes()


@pytest.mark.asyncio
async def test_concurrent_charges_add_up_exactly(tmp_path):
    store = SqliteBudgetStore(str(tmp_path / "b.sqlite3"))
    b = budgets({"tokens_per_day": 10_000}, store)
    await asyncio.gather(*(b.charge("sk-a", 7, 0.01) for _ in range(50)))
    assert await store.spent(key_id("sk-a"), "2024-05-01") == (350, 0.5)
    # a second store on the same file (another worker process) sees and adds to the same rows
    other = SqliteBudgetStore(str(tmp_path / "b.sqlite3"))
    await asyncio.gather(*(other.add(key_id("sk-a"), "2024-05-01", 1, 0.0) for _ in range(20)),
                         *(b.charge("sk-a", 1, None) for _ in range(20)))
    assert await store.spent(key_id("sk-a"), "2024-05-01") == (390, 0.5)
    await asyncio.gather(store.aclose(), other.aclose())


@pytest.mark.asyncio
async def test_sqlite_work_stays_off_the_event_loop(tmp_path):
    store = SqliteBudgetStore(str(tmp_path / "b.sqlite3"))
    threads, run = [], store._run

    def spy(fn):
        threads.append(threading.current_thread())
        return run(fn)

    store._run = spy
    loop_thread = threading.current_thread()
    await store.add("k", "d", 1, 0.0)
    await store.spent("k", "d")
    assert threads and all(t is not loop_thread for t in threads)
    await store.aclose()


def test_config_validation_names_the_key_path(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    cases = [({"tokens_per_day": 0}, "budgets.tokens_per_day"),
             ({"cost_usd_per_day": -1}, "budgets.cost_usd_per_day"),
             ({"tokens": 5}, "budgets.tokens"),
             ({"keys": {"sk-literal-secret": {"tokens_per_day": "lots"}}}, "budgets.keys[0].tokens_per_day"),
             ({"keys": {"sk-literal-secret": {"rpm": 1}}}, "budgets.keys[0].rpm"),
             ({"keys": {"os.environ/NO_SUCH_KEY_VAR": {}}}, "budgets.keys.os.environ/NO_SUCH_KEY_VAR"),
             ({"keys": ["sk-a"]}, "budgets.keys"),
             ({"path": 3}, "budgets.path"),
             ([], "budgets")]
    for raw, path in cases:
        with pytest.raises(ConfigError) as exc:
            parse_budgets(raw)
        assert exc.value.path == path, raw
        assert "sk-literal-secret" not in str(exc.value)
    assert parse_budgets(None) is None
    assert parse_budgets({}) == BudgetConfig(BudgetLimits(None, None))


@pytest.mark.asyncio
async def test_build_budgets_default_path_and_no_limits(tmp_path):
    assert build_budgets(None, str(tmp_path), auth_enabled=True) is None
    b = build_budgets(parse_budgets({"tokens_per_day": 5}), str(tmp_path / "st"), auth_enabled=True)
    assert b.store.path == str(tmp_path / "st" / "budgets.sqlite3")
    await b.charge("sk-a", 5, None)
    assert (tmp_path / "st" / "budgets.sqlite3").exists()
    with pytest.raises(ApiError):
        await b.check("sk-a")
    await b.aclose()
    unlimited = budgets({})
    await unlimited.charge("sk-a", 10**9, 10**6)
    await unlimited.check("sk-a")


def test_client_key_reads_headers_like_the_auth_middleware():
    assert client_key({"authorization": "Bearer sk-a"}) == "sk-a"
    basic = base64.b64encode(b"user:sk-b").decode()
    assert client_key({"authorization": f"Basic {basic}"}) == "sk-b"
    assert client_key({"authorization": "Basic !!!"}) is None
    assert client_key({}) is None
    assert client_key({"authorization": "Bearer "}) is None


class DownStore(MemoryBudgetStore):
    """A store that cannot answer (as a locked file or a stopped Redis would)."""

    async def reserve(self, key_id, day, tokens, limits):
        raise StateError("budgets", "test: down")

    settle = reserve


@pytest.mark.asyncio
async def test_reserve_holds_the_maximum_until_settled_and_says_why_it_refuses():
    b = budgets({"tokens_per_day": 100})
    first = await b.reserve("sk-a", 80)  # room: 0 < 100
    second = await b.reserve("sk-a", 80)  # room: 80 < 100 (the bound: one request's maximum)
    with pytest.raises(ApiError) as held:
        await b.reserve("sk-a", 80)  # 160 reserved: in-flight requests hold the budget
    assert (held.value.code, held.value.headers, held.value.retry) == ("budget_reserved", {"Retry-After": "2"}, True)
    assert held.value.extra == {"budget": "tokens_per_day", "limit": 100, "spent": 0, "reserved": 160}
    await b.settle(first, 30, None)
    await b.settle(second, 30, None)
    assert await b.store.spent(key_id("sk-a"), "2024-05-01") == (60, 0.0)
    await b.settle(await b.reserve("sk-a", 80), 50, None)  # 60 < 100: admitted, spends 50
    with pytest.raises(ApiError) as spent:
        await b.reserve("sk-a", 1)
    assert spent.value.code == "budget_exceeded" and "110 of 100 tokens" in spent.value.message


@pytest.mark.asyncio
async def test_a_store_that_cannot_answer_follows_on_state_error():
    closed = budgets({"tokens_per_day": 100}, DownStore())
    with pytest.raises(ApiError) as exc:
        await closed.reserve("sk-a", 10)
    assert (exc.value.status, exc.value.code) == (503, "state_unavailable")
    opened = budgets({"tokens_per_day": 100, "on_state_error": "open"}, DownStore())
    reservation = await opened.reserve("sk-a", 10)
    assert reservation.tokens == 0
    await opened.settle(reservation, 5, 0.1)  # the spend cannot be recorded: counted and logged, never raised
    with pytest.raises(ConfigError, match="budgets.on_state_error"):
        parse_budgets({"on_state_error": "maybe"})
