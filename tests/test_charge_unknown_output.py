"""The budget is charged conservatively for a call whose output length is unknown (a body or a
stream that broke off): the request's reservation is kept, not refunded down to what arrived.
The client's `usage` stays what arrived. A call that ended cleanly is charged what it used."""

from __future__ import annotations

import json
import sqlite3
import time

import openai
import pytest

from itsproxy.proxy.metering.budgets import key_id
from tests.conftest import sim_models

KEY = "sk-charge-test"
MSG = [{"role": "user", "content": "What is 17 + 25?"}]
MAX_TOKENS = 64
RESERVED = MAX_TOKENS + len(json.dumps(MSG)) // 3 + 1  # request_maximum for one candidate


@pytest.fixture(params=["auto", "litellm"])
def proxy(request, make_proxy, sim, tmp_path):
    """Both upstream backends: litellm reports a cut body as a connection error, which must not
    turn into an unmetered call (via_litellm.py tells the two apart)."""
    models = sim_models(sim.url, cut="sim@reset_mid_body", bad_chunk="sim@malformed_chunk")
    config = {"model_list": models,
              "routes": [{"name": m, "match": {"model": m}, "generate": {"model": m}, "passthrough": True}
                         for m in ("sim", "cut", "bad_chunk")],
              "server": {"api_keys": [KEY], "state_dir": str(tmp_path), "upstream_client": request.param},
              "budgets": {"tokens_per_day": 10_000_000, "state_timeout_s": 5.0}}
    p = make_proxy(config, sim, api_key=KEY)
    p.db = tmp_path / "budgets.sqlite3"
    return p


def _spent(path) -> tuple[int, int]:
    """(charged, still reserved), once the request has settled (a stream settles as it closes)."""
    for _ in range(200):
        with sqlite3.connect(path) as db:
            row = db.execute("SELECT tokens, reserved FROM spend WHERE key_id = ?", (key_id(KEY),)).fetchone()
        if row and row[1] == 0:
            break
        time.sleep(0.025)
    return (row[0], row[1]) if row else (0, 0)


def test_a_clean_answer_is_charged_what_it_used(proxy) -> None:
    r = proxy.client.chat.completions.create(model="sim", messages=MSG, max_tokens=MAX_TOKENS)
    assert _spent(proxy.db) == (r.usage.total_tokens, 0)
    assert r.usage.total_tokens < RESERVED  # so the next tests tell the two policies apart


def test_a_body_cut_half_way_keeps_its_reservation(proxy) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        proxy.client.chat.completions.create(model="cut", messages=MSG, max_tokens=MAX_TOKENS)
    assert info.value.status_code == 502
    assert _spent(proxy.db) == (RESERVED, 0)


def test_a_stream_broken_by_a_malformed_chunk_keeps_its_reservation(proxy) -> None:
    told = 0
    with pytest.raises(openai.APIError):
        for chunk in proxy.client.chat.completions.create(model="bad_chunk", messages=MSG, max_tokens=MAX_TOKENS,
                                                          stream=True, stream_options={"include_usage": True}):
            told = chunk.usage.total_tokens if chunk.usage else told
    assert told == 0  # the client was told nothing it could bill: the stream ended with an error event
    assert _spent(proxy.db) == (RESERVED, 0)
