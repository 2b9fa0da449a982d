"""Degradation is said: `its.degraded` and its_degraded_total when fewer candidates were compared
than requested; and a client that sends half a body gets a 408, not a connection held open."""

from __future__ import annotations

import socket

from conftest import VOTE_ROUTE, ask_its
from observability_helpers import metric_sum, parse_metrics

QUESTION = "What is 1 + 1?"


def degraded_count(proxy, route: str) -> float:
    return metric_sum(parse_metrics(proxy.http.get("/metrics").text), "its_degraded_total", route=route)


def test_a_thin_vote_says_it_is_degraded(make_proxy, fresh_sim):
    pool = {"models": [{"model": "sim", "n": 1}, {"model": "sim-broken", "n": 7}], "temperature": 0.8}
    p = make_proxy({"routes": [{**VOTE_ROUTE, "name": "thin", "generate": pool}]}, fresh_sim)
    before = degraded_count(p, "thin")
    _, its = ask_its(p.client, "math", QUESTION, seed=1)
    assert its["candidates"] == 1
    assert its["degraded"] == {"requested": 8, "drawn": 1, "failed": 1, "why": "1 upstream call(s) failed"}
    assert degraded_count(p, "thin") - before == 1


def test_a_full_vote_is_not_degraded(make_proxy, fresh_sim):
    p = make_proxy({"routes": [{**VOTE_ROUTE, "name": "full"}]}, fresh_sim)
    before = degraded_count(p, "full")
    _, its = ask_its(p.client, "math", QUESTION, seed=1)
    assert its["candidates"] == 9 and "degraded" not in its
    assert degraded_count(p, "full") == before


def test_an_upstream_giving_fewer_choices_is_topped_up_not_degraded(make_proxy, fresh_sim):
    route = {**VOTE_ROUTE, "name": "fewer", "generate": {"model": "sim-max2", "n": 4}}
    p = make_proxy({"routes": [route]}, fresh_sim)
    _, its = ask_its(p.client, "math", QUESTION, seed=1)
    assert its["candidates"] == 4 and its["usage"]["calls"] > 1 and "degraded" not in its


def test_half_a_body_gets_408(make_proxy, fresh_sim):
    p = make_proxy({"server": {"body_timeout_s": 0.5}, "routes": [VOTE_ROUTE]}, fresh_sim)
    host, port = p.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: 200\r\n\r\n{\"model\": \"math\", ")
        reply = s.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 408"), reply
    assert '"code":"body_timeout"' in reply
