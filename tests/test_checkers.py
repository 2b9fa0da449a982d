"""Sound external checkers: real processes, a real loopback HTTP server, no mocks."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from checker_helpers import PATH, QUESTION, cand, one, run
from itsproxy.strategies.checkers.build import (
    aclose_checkers,
    build_checkers,
    check_candidates,
    check_extractor,
    payload_for,
)
from itsproxy.strategies.types import SpecError

# ---------------------------------------------------------------- payload, stage


def test_payload_shape():
    tc = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"answer": 1}'}}]
    p = payload_for(cand(None, tool_calls=tc), QUESTION)
    assert p == {"messages": QUESTION, "candidate": {"role": "assistant", "content": None, "tool_calls": tc},
                 "answer": None}
    assert "tool_calls" not in payload_for(cand("x", answer="7"), QUESTION)["candidate"]


@pytest.mark.asyncio
async def test_check_candidates_order_and_fail_closed():
    checkers = build_checkers({"python": "itsproxy.proxy.demo_checks:check_sum", "regex": "^4"}, PATH)
    cands = [cand("The answer is 42.", "42", 0), cand("The answer is 41.", "41", 1), cand("nothing", None, 2)]
    await check_candidates(checkers, cands, QUESTION)
    assert [[v.checker for v in c.verdicts] for c in cands] == [["python:itsproxy.proxy.demo_checks:check_sum", "regex"]] * 3
    assert [c.verified for c in cands] == [True, False, False]
    assert cands[0].verdicts[0].critique == "17 + 25 = 42, correct"
    assert all(v.hard for c in cands for v in c.verdicts)

    class Broken:  # a checker that raises must not escape check_candidates
        name = "broken"

        async def check(self, payload):
            raise RuntimeError("kaput")

    c = cand()
    await check_candidates([Broken()], [c], QUESTION)
    assert not c.verified and "kaput" in c.verdicts[0].critique


# ---------------------------------------------------------------- python


ENTRIES = '''
import asyncio, time

def sync_bool(payload):
    return payload["answer"] == "42"

async def async_tuple(payload):
    await asyncio.sleep(0)
    return payload["answer"] == "42", "checked " + str(payload["answer"])

def garbage(payload):
    return {"pass": True}

def truthy_int(payload):
    return 1

def raises(payload):
    raise KeyError("missing thing")

async def slow(payload):
    await asyncio.sleep(5)
    return True

def slow_sync(payload):
    time.sleep(0.6)
    return True

def mutate(payload):
    payload["answer"] = "hacked"
    return True

NOT_CALLABLE = 3
'''


@pytest.fixture
def entries(tmp_path, monkeypatch):
    (tmp_path / "its_test_entries.py").write_text(ENTRIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "its_test_entries"
    sys.modules.pop("its_test_entries", None)


@pytest.mark.asyncio
async def test_python_sync_and_async(entries):
    assert (await run({"python": f"{entries}:sync_bool"}, answer="42")).passed
    v = await run({"python": f"{entries}:sync_bool"}, answer="41")
    assert not v.passed and v.checker == f"python:{entries}:sync_bool"
    v = await run({"python": f"{entries}:async_tuple"}, answer="42")
    assert v.passed and v.critique == "checked 42"
    v = await run({"python": f"{entries}:async_tuple"}, answer="7")
    assert not v.passed and v.critique == "checked 7"


@pytest.mark.asyncio
async def test_python_garbage_raises_timeout(entries):
    v = await run({"python": f"{entries}:garbage"})
    assert not v.passed and "expected bool or (bool, critique)" in v.critique and "dict" in v.critique
    v = await run({"python": f"{entries}:truthy_int"})
    assert not v.passed and "int" in v.critique
    v = await run({"python": f"{entries}:raises"})
    assert not v.passed and "KeyError" in v.critique and "missing thing" in v.critique
    v = await run({"python": f"{entries}:slow", "timeout_s": 0.2})
    assert not v.passed and "timed out after 0.2s" in v.critique
    v = await run({"python": f"{entries}:slow_sync", "timeout_s": 0.2})
    assert not v.passed and "timed out after 0.2s" in v.critique


@pytest.mark.asyncio
async def test_python_cannot_alter_shared_payload(entries):
    checkers = build_checkers({"python": f"{entries}:mutate", "regex": "^42$"}, PATH)
    c = cand(answer="42")
    await check_candidates(checkers, [c], QUESTION)
    assert c.verified


@pytest.mark.asyncio
async def test_demo_checks_python_entry():
    spec = {"python": "itsproxy.proxy.demo_checks:check_sum", "timeout_s": 5}
    v = await run(spec, "I think it's 40 + 2 = 42")
    assert v.passed and v.critique == "17 + 25 = 42, correct"
    v = await run(spec, "whatever", answer="-8")
    assert not v.passed and "-8 is wrong" in v.critique and "42" not in v.critique
    tc = [{"id": "c", "type": "function", "function": {"name": "submit", "arguments": '{"answer": 42}'}}]
    assert (await run(spec, None, tool_calls=tc)).passed
    v = await run(spec, "no digits here")
    assert not v.passed and "No integer answer" in v.critique
    v = await run(spec, messages=[{"role": "user", "content": "hello"}])
    assert not v.passed and "question" in v.critique
    msgs = [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"},
            {"role": "user", "content": "Now: what is -5 + -7?"}]
    assert (await run(spec, "It is -12.", messages=msgs)).passed


# ---------------------------------------------------------------- http


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        route = self.path
        if route == "/verify":
            ok = payload["answer"] == "42"
            self._send(200, json.dumps({"pass": ok, "critique": "fine" if ok else "wrong"}).encode())
        elif route == "/500":
            self._send(500, b"internal " + b"z" * 10_000)
        elif route == "/badjson":
            self._send(200, b"<html>not json</html>")
        elif route == "/nopass":
            self._send(200, json.dumps({"pass": "yes"}).encode())
        elif route == "/redirect":
            self._send(307, b"", {"Location": "/verify"})
        elif route == "/huge":
            self._send(200, b"{" + b" " * 2_000_000 + b"}")
        elif route == "/slow":
            time.sleep(2)
            self._send(200, b'{"pass": true}')
        else:
            self._send(404, b"")


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.asyncio
async def test_http_pass_fail(server):
    spec = {"http": {"url": f"{server}/verify", "timeout_s": 5}}
    checker = one(spec)
    assert checker.name.startswith("http:127.0.0.1:")
    try:
        v = await checker.check(payload_for(cand(answer="42"), QUESTION))
        assert v.passed and v.critique == "fine"
        v = await checker.check(payload_for(cand(answer="41"), QUESTION))
        assert not v.passed and v.critique == "wrong"
    finally:
        await aclose_checkers([checker])


@pytest.mark.asyncio
async def test_http_failures_fail_closed(server):
    v = await run({"http": {"url": f"{server}/500"}}, answer="42")
    assert not v.passed and "HTTP 500" in v.critique and len(v.critique) < 2 * 1024 + 100
    v = await run({"http": {"url": f"{server}/badjson"}}, answer="42")
    assert not v.passed and "not valid JSON" in v.critique
    v = await run({"http": {"url": f"{server}/nopass"}}, answer="42")
    assert not v.passed and "boolean 'pass'" in v.critique
    v = await run({"http": {"url": f"{server}/redirect"}}, answer="42")
    assert not v.passed and "HTTP 307" in v.critique
    v = await run({"http": {"url": f"{server}/huge"}}, answer="42")
    assert not v.passed and "exceeded" in v.critique and len(v.critique) < 200
    v = await run({"http": {"url": f"{server}/slow", "timeout_s": 0.3}}, answer="42")
    assert not v.passed and "timed out after 0.3s" in v.critique
    v = await run({"http": "http://127.0.0.1:1/verify"}, answer="42")  # nothing listens
    assert not v.passed and "request failed" in v.critique


# ---------------------------------------------------------------- json_schema, regex


SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "integer"}}}


@pytest.mark.asyncio
async def test_json_schema():
    assert (await run({"json_schema": SCHEMA}, '{"answer": 42}')).passed
    v = await run({"json_schema": SCHEMA}, '{"answer": "42"}')
    assert not v.passed and "$.answer" in v.critique and "not of type 'integer'" in v.critique
    v = await run({"json_schema": SCHEMA}, '{"other": 1}')
    assert not v.passed and "'answer' is a required property" in v.critique
    v = await run({"json_schema": SCHEMA}, "The answer is 42")
    assert not v.passed and "not valid JSON" in v.critique
    # the extracted answer wins over the content; tool call arguments when no content
    assert (await run({"json_schema": {"type": "integer"}}, "prose", answer="42")).passed
    tc = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"answer": 3}'}}]
    assert (await run({"json_schema": SCHEMA}, None, tool_calls=tc)).passed


@pytest.mark.asyncio
async def test_regex():
    assert (await run({"regex": r"^\d+$"}, "prose", answer="42")).passed
    v = await run({"regex": r"^\d+$"}, "The answer is 42.")
    assert not v.passed and "does not match" in v.critique


@pytest.mark.asyncio
async def test_several_kinds_in_one_stage():
    checkers = build_checkers({"regex": r"^\{", "json_schema": SCHEMA, "extract": "json"}, PATH)
    assert [c.name for c in checkers] == ["regex", "json_schema"]
    assert check_extractor({"regex": "x", "extract": "number"}) == "number"
    assert check_extractor({"regex": "x"}) is None


# ---------------------------------------------------------------- build-time errors


@pytest.mark.parametrize(
    "spec, path, words",
    [
        ("nope", "", "mapping"),
        ({}, "", "names no checker"),
        ({"regex": "x", "bogus": 1}, ".bogus", "unknown key"),
        ({"command": "python -m x"}, ".command", "list"),
        ({"command": []}, ".command", "non-empty"),
        ({"command": ["python", 3]}, ".command[1]", "string"),
        ({"command": ["x"], "timeout_s": -1}, ".timeout_s", "positive"),
        ({"command": ["x"], "timeout_s": "5"}, ".timeout_s", "positive"),
        ({"command": ["x"], "timeout_s": True}, ".timeout_s", "positive"),
        ({"command": ["x"], "cpu_s": 0}, ".cpu_s", "positive"),
        ({"command": ["x"], "memory_mb": 1.5}, ".memory_mb", "integer"),
        ({"command": ["x"], "max_concurrency": 0}, ".max_concurrency", "positive"),
        ({"command": ["x"], "env": ["A=1"]}, ".env", "mapping"),
        ({"command": ["x"], "env": {"A": {"b": 1}}}, ".env.A", "string"),
        ({"command": ["its-no-such-program-xyz"]}, ".command[0]", "not found on PATH"),
        ({"command": ["/nonexistent/checker-binary"]}, ".command[0]", "not an executable file"),
        ({"regex": "x", "cpu_s": 3}, ".cpu_s", "command"),
        ({"regex": "x", "extract": 5}, ".extract", "extractor"),
        ({"regex": "(unclosed"}, ".regex", "invalid regular expression"),
        ({"regex": 5}, ".regex", "string"),
        ({"json_schema": {"type": 12}}, ".json_schema.type", "invalid JSON schema"),
        ({"json_schema": {"properties": {"a": {"minimum": "x"}}}}, ".json_schema.properties.a.minimum",
         "invalid JSON schema"),
        ({"json_schema": {"$schema": "http://example.com/nope"}}, ".json_schema.$schema", "unknown"),
        ({"json_schema": "object"}, ".json_schema", "mapping"),
        ({"python": "itsproxy.proxy.demo_checks"}, ".python", "package.module:function"),
        ({"python": "its_no_such_module_xyz:f"}, ".python", "cannot import"),
        ({"python": "itsproxy.proxy.demo_checks:nope"}, ".python", "no attribute"),
        ({"python": "itsproxy.proxy.demo_checks:_QUESTION"}, ".python", "not callable"),
        ({"python": "itsproxy.proxy.demo_checks:check_sum", "timeout_s": 0}, ".timeout_s", "positive"),
        ({"http": {"url": "ftp://x/y"}}, ".http.url", "http(s)"),
        ({"http": {"url": 5}}, ".http.url", "URL"),
        ({"http": {"url": "http://x", "bogus": 1}}, ".http.bogus", "unknown key"),
        ({"http": {"url": "http://x", "timeout_s": -2}}, ".http.timeout_s", "positive"),
        ({"http": 5}, ".http", "mapping"),
    ],
)
def test_spec_errors(spec, path, words):
    with pytest.raises(SpecError) as err:
        build_checkers(spec, PATH)
    assert err.value.path == PATH + path
    assert words in err.value.message


def test_defaults():
    c = one({"command": ["python", "-m", "itsproxy.proxy.demo_checks"], "timeout_s": 2.5})
    assert (c.timeout_s, c.cpu_s, c.memory_mb, c.argv[0]) == (2.5, 3, 1024, sys.executable)
    h = one({"http": {"url": "https://verify.example:8443/v"}, "timeout_s": 3})
    assert h.name == "http:verify.example:8443" and h.timeout_s == 3
