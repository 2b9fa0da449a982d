"""Budgets reserve before the call and settle after (metering/budgets.py), through a real proxy:
concurrency cannot overshoot by more than one request's maximum, and a broken state file is
named at startup or answered by the `on_state_error` policy without stalling the proxy."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import openai
import pytest
import yaml

from itsproxy.proxy.cli import main
from itsproxy.proxy.config import parse_config
from itsproxy.proxy.metering.budgets import StateError, key_id
from itsproxy.proxy.runtime import Services
from itsproxy.proxy.telemetry.metrics import REGISTRY
from tests.conftest import sim_models

KEY = "sk-reserve-test"
MSG = [{"role": "user", "content": "What is 17 + 25?"}]
MAX_TOKENS = 40  # above what the simulator's chat answers use (it does not cut chat at max_tokens)
BUDGET = 500


def _config(tmp_path, sim, **budgets) -> dict:
    return {"model_list": sim_models(sim.url, slow="sim@latency_ms=300"),
            "routes": [{"name": "p", "match": {"model": "*"}, "generate": {"model": "slow"}, "passthrough": True}],
            "server": {"api_keys": [KEY], "state_dir": str(tmp_path)},
            "budgets": {"tokens_per_day": BUDGET, **budgets}}


async def _burst(base_url: str, count: int) -> list[int | str]:
    """`count` requests at once; each one's status (200, or the error's status and code)."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=20) as client:
        async def one() -> int | str:
            try:
                await client.chat.completions.create(model="p", messages=MSG, max_tokens=MAX_TOKENS)
                return 200
            except openai.APIStatusError as exc:
                return f"{exc.status_code} {exc.body.get('code') if isinstance(exc.body, dict) else ''}"
        return list(await asyncio.gather(*(one() for _ in range(count))))


def _row(path) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT tokens, reserved FROM spend WHERE key_id = ?", (key_id(KEY),)).fetchone()
    return (row[0], row[1]) if row else (0, 0)


def test_fifty_concurrent_requests_overshoot_by_at_most_one_reservation(make_proxy, sim, tmp_path) -> None:
    proxy = make_proxy(_config(tmp_path, sim), sim, api_key=KEY)
    statuses = asyncio.run(_burst(proxy.handle.base_url, 50))
    spent, reserved = _row(tmp_path / "budgets.sqlite3")
    one_request_max = MAX_TOKENS + len('[{"role": "user", "content": "What is 17 + 25?"}]') // 3 + 1
    assert statuses.count(200) >= 1 and statuses.count("429 budget_reserved") >= 1, statuses
    assert set(statuses) <= {200, "429 budget_reserved"}, statuses
    assert reserved == 0, "every reservation was settled"
    assert BUDGET // 40 <= spent <= BUDGET + one_request_max, (spent, statuses)  # before reservations: 3,150
    # Once the spend itself reached the limit, the refusal is the day's, with Retry-After until midnight.
    with pytest.raises(openai.RateLimitError) as exc:
        for _ in range(60):
            proxy.client.chat.completions.create(model="p", messages=MSG, max_tokens=MAX_TOKENS)
    assert exc.value.body["code"] == "budget_exceeded"
    assert int(exc.value.response.headers["retry-after"]) > 0
    assert _row(tmp_path / "budgets.sqlite3")[0] <= BUDGET + one_request_max


def test_a_corrupt_budget_file_is_named_at_startup(sim, tmp_path, capsys) -> None:
    db = tmp_path / "budgets.sqlite3"
    db.write_bytes(b"this is not a database, " * 200)
    cfg = _config(tmp_path, sim)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["check-config", str(path), str(path)]) == 2
    err = capsys.readouterr().err
    assert str(db) in err and "state error" in err, err
    services = Services(parse_config(cfg))
    with pytest.raises(StateError, match=str(db)):
        asyncio.run(services.start())
    asyncio.run(services.aclose())


def _errors() -> float:
    return REGISTRY.get_sample_value("its_state_errors_total", {"store": "budgets"}) or 0.0


@pytest.mark.parametrize("policy", ["closed", "open"])
def test_a_write_locked_budget_file_follows_the_policy_without_stalling(make_proxy, sim, tmp_path, caplog,
                                                                       policy) -> None:
    proxy = make_proxy(_config(tmp_path, sim, on_state_error=policy), sim, api_key=KEY)
    proxy.client.chat.completions.create(model="p", messages=MSG, max_tokens=MAX_TOKENS)  # creates the file
    lock = sqlite3.connect(tmp_path / "budgets.sqlite3", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    before = _errors()
    try:
        with caplog.at_level(logging.ERROR, logger="itsproxy.proxy.metering.budgets"):
            statuses = asyncio.run(_burst(proxy.handle.base_url, 30))  # 20 s client timeout: a stall fails
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    expected = 200 if policy == "open" else "503 state_unavailable"
    assert statuses == [expected] * 30, statuses
    assert _errors() - before >= 1
    failures = [r for r in caplog.records if "store failed" in r.getMessage()]
    assert len(failures) == 1 and "locked" in failures[0].getMessage(), [r.getMessage() for r in failures]
