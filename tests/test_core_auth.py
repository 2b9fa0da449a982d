"""API keys: Bearer on /v1/* and /dashboard; /health open; /metrics open unless protected."""

from __future__ import annotations

import base64

import openai
import pytest

from conftest import PASS_ROUTE

MSG = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture
def locked(make_proxy, sim):
    return make_proxy({"routes": [PASS_ROUTE], "server": {"api_keys": ["sk-client-1", "sk-client-2"]}}, sim,
                      api_key="sk-client-2")


def test_right_key_served(locked):
    assert locked.client.chat.completions.create(model="sim", messages=MSG).choices


def test_wrong_or_missing_key_401(locked):
    bad = openai.OpenAI(base_url=locked.handle.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.chat.completions.create(model="sim", messages=MSG)
    assert exc.value.body["code"] == "invalid_api_key"
    assert locked.http.get("/v1/models").status_code == 401
    assert locked.http.get("/dashboard").status_code == 401


def test_open_paths(locked):
    assert locked.http.get("/health").status_code == 200
    assert locked.http.get("/metrics").status_code == 200


def test_basic_auth_opens_the_dashboard(locked):
    token = base64.b64encode(b"me:sk-client-1").decode()
    assert locked.http.get("/dashboard", headers={"authorization": f"Basic {token}"}).status_code == 200


def test_protected_metrics(make_proxy, sim):
    p = make_proxy({"routes": [PASS_ROUTE], "server": {"api_keys": ["k1"], "protect_metrics": True}}, sim)
    assert p.http.get("/metrics").status_code == 401
    assert p.http.get("/metrics", headers={"authorization": "Bearer k1"}).status_code == 200
