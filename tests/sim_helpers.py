"""Fixtures and helpers shared by the simulator's tests."""

from __future__ import annotations

import httpx
import openai
import pytest

from itsproxy.proxy.simulator import SimConfig, questions, serve_in_thread
from itsproxy.proxy.simulator.questions import last_number

QS = questions(42, 300)


@pytest.fixture(scope="module")
def sim():
    handle = serve_in_thread(SimConfig(seed=7))
    yield handle
    handle.stop()


@pytest.fixture()
def fresh():
    """A private simulator, for exact /stats and /control tests."""
    handle = serve_in_thread(SimConfig(seed=3))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def http(sim):
    with httpx.Client(base_url=sim.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def client(sim):
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-sim", max_retries=0)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def chat(http: httpx.Client, **body) -> dict:
    body.setdefault("model", "sim")
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def answers(resp: dict) -> list:
    return [last_number(c["message"]["content"]) for c in resp["choices"]]


def accuracy(http, model="sim", system=None, qs=QS) -> float:
    right = 0
    for i, (q, truth) in enumerate(qs):
        msgs = ([{"role": "system", "content": system}] if system else []) + user(q)
        right += answers(chat(http, model=model, messages=msgs, seed=i))[0] == truth
    return right / len(qs)
