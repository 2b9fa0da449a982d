"""The simulator's fault modes: each one's wire bytes are what its name says (raw httpx)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from itsproxy.proxy.metering import tokens
from itsproxy.proxy.simulator import SimConfig, parse_model_options
from sim_helpers import QS, client, fresh, http, sim, user  # noqa: F401 - fixtures

Q = user(QS[0][0])


def post(http: httpx.Client, opts: str, stream: bool = False, path: str = "/v1/chat/completions",
         **extra) -> httpx.Response:
    body = {"model": f"sim@{opts}", "messages": Q, "seed": 1, **extra}
    if path.endswith("/completions") and "chat" not in path:
        body = {"model": f"sim@{opts}", "prompt": QS[0][0], "seed": 1, **extra}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return http.post(path, json=body)


def sse_events(raw: str) -> list[str]:
    """The data of each event, per the SSE spec (comments skipped, data lines joined by \\n)."""
    out, data = [], []
    for line in raw.replace("\r\n", "\n").split("\n"):
        if not line:
            if data:
                out.append("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return out


def chunks(raw: str) -> list[dict]:
    return [json.loads(d) for d in sse_events(raw) if d != "[DONE]"]


def streamed_text(raw: str) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks(raw) if c["choices"])


def test_fail_statuses_and_retry_after(http, client):
    for status, kind in ((429, "rate_limit_error"), (500, "server_error"), (502, "server_error"),
                         (503, "server_error")):
        r = post(http, f"fail_rate=1@fail_status={status}")
        assert r.status_code == status and r.json()["error"]["type"] == kind
        assert "retry-after" not in r.headers
    r = post(http, "fail_rate=1@fail_status=429@retry_after_s=7")
    assert (r.status_code, r.headers["retry-after"]) == (429, "7")
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="sim@fail_rate=1@fail_status=429@retry_after_s=7", messages=Q)
    assert err.value.response.headers["retry-after"] == "7"


def test_refuse_resets_before_any_byte(fresh):
    with httpx.Client(base_url=fresh.url) as http:
        for path in ("/v1/chat/completions", "/v1/completions"):
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
                post(http, "refuse", path=path)
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            http.post("/v1/embeddings", json={"model": "sim@refuse", "input": "x"})
        s = http.get("/stats").json()
        assert (s["requests"], s["errors"], s["completion_tokens"]) == (3, 3, 0)


def test_reset_mid_body_sends_half_then_resets(http):
    got = b""
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        with http.stream("POST", "/v1/chat/completions", json={"model": "sim@reset_mid_body", "messages": Q}) as r:
            assert r.status_code == 200
            length = int(r.headers["content-length"])
            for part in r.iter_raw():
                got += part
    assert 0 < len(got) < length and got.startswith(b'{"id": ')
    got = b""
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        with http.stream("POST", "/v1/chat/completions", json={
                "model": "sim@reset_mid_body", "messages": Q, "stream": True}) as r:
            for part in r.iter_raw():
                got += part
    assert got.startswith(b"data: {") and b"[DONE]" not in got and b'"finish_reason": "stop"' not in got


def test_truncate_stream_ends_cleanly_without_finish_or_done(fresh):
    with httpx.Client(base_url=fresh.url) as http:
        plain = post(http, "stream_delay_ms=0", stream=True).text
        r = post(http, "truncate_stream", stream=True)
        assert r.status_code == 200 and "[DONE]" not in r.text
        cs = chunks(r.text)
        assert all(c["choices"] and c["choices"][0]["finish_reason"] is None for c in cs)
        text = streamed_text(r.text)
        assert text and streamed_text(plain).startswith(text) and text != streamed_text(plain)
        s = http.get("/stats").json()["by_model"]["sim@truncate_stream"]
        assert s["completion_tokens"] == tokens.count_text(text)  # billed as far as it got


def test_no_done(http):
    r = post(http, "no_done", stream=True)
    assert "[DONE]" not in r.text and r.text.endswith("\n\n")
    assert [c["choices"][0]["finish_reason"] for c in chunks(r.text) if c["choices"]][-1] == "stop"
    assert chunks(r.text)[-1]["usage"]["completion_tokens"] > 0


def test_malformed_chunk(http):
    r = post(http, "malformed_chunk", stream=True)
    datas = sse_events(r.text)
    bad = []
    for i, d in enumerate(datas[:-1]):
        try:
            json.loads(d)
        except ValueError:
            bad.append(i)
    assert len(bad) == 1 and 0 < bad[0] < len(datas) - 1 and datas[bad[0]] == '{"id": "broken'
    assert datas[-1] == "[DONE]"


@pytest.mark.parametrize("opt", ["sse_multiline", "sse_comments", "crlf"])
def test_legal_sse_variants(http, client, opt):
    r = post(http, opt, stream=True)
    plain = post(http, "stream_delay_ms=0", stream=True)
    lines = r.text.split("\r\n" if opt == "crlf" else "\n")
    if opt == "sse_multiline":
        first_event = r.text.split("\n\n")[0]
        assert first_event.count("data: ") > 5
    if opt == "sse_comments":
        assert lines.count(": ping") == len(sse_events(r.text)) - 1  # before each event but [DONE]
    if opt == "crlf":
        assert "\n" not in r.text.replace("\r\n", "")
    assert streamed_text(r.text) == streamed_text(plain.text)
    sdk = client.chat.completions.create(model=f"sim@{opt}", messages=Q, seed=1, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in sdk if c.choices) == streamed_text(plain.text)


def test_json_to_stream_and_html_reply(http):
    r = post(http, "json_to_stream", stream=True)
    assert r.headers["content-type"] == "application/json" and r.json()["object"] == "chat.completion"
    r = post(http, "json_to_stream", stream=True, path="/v1/completions")
    assert r.json()["object"] == "text_completion"
    r = post(http, "html_reply", stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text.startswith("<!DOCTYPE html>")


def test_bad_usage(http):
    expect = {"negative": lambda u: u["completion_tokens"] == -100000,
              "string": lambda u: isinstance(u, dict) and all(isinstance(v, str) for v in u.values()),
              "list": lambda u: isinstance(u, list) and len(u) == 3,
              "missing": lambda u: set(u) == {"prompt_tokens"}}
    for mode, ok in expect.items():
        assert ok(post(http, f"bad_usage={mode}").json()["usage"]), mode
        assert ok(chunks(post(http, f"bad_usage={mode}", stream=True).text)[-1]["usage"]), mode
    assert ok(post(http, "bad_usage=missing", path="/v1/completions").json()["usage"])
    assert post(http, "bad_usage=bogus").status_code == 400


def test_bad_choices_and_object_content(http):
    assert post(http, "bad_choices").json()["choices"] == [1, "two", None]
    assert [1, "two", None] in [c["choices"] for c in chunks(post(http, "bad_choices", stream=True).text)]
    content = post(http, "object_content").json()["choices"][0]["message"]["content"]
    assert content["type"] == "text" and "The answer is" in content["text"]
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks(post(http, "object_content", stream=True).text)
              if c["choices"] and "content" in c["choices"][0]["delta"]]
    assert deltas and all(isinstance(d, dict) for d in deltas)
    assert isinstance(post(http, "object_content", path="/v1/completions").json()["choices"][0]["text"], dict)


def test_fewer_choices_alias():
    assert parse_model_options("sim@fewer_choices=1")[1] == {"max_n": 1}


def test_trickle_sends_the_body_in_small_pieces(http):
    with http.stream("POST", "/v1/chat/completions", json={"model": "sim@trickle_ms=30", "messages": Q}) as r:
        parts = list(r.iter_raw())
    body = b"".join(parts)
    assert len(parts) >= 3 and max(len(p) for p in parts) < len(body)
    assert json.loads(body)["object"] == "chat.completion"


def test_huge_body_is_valid_and_counted(fresh):
    with httpx.Client(base_url=fresh.url, timeout=30) as http:
        r = post(http, "huge_body_mb=0.5")
        assert int(r.headers["content-length"]) == len(r.content) > 500_000
        body = r.json()
        content = body["choices"][0]["message"]["content"]
        assert content.startswith(" ok ok ok") and content.endswith(".")
        assert body["usage"]["completion_tokens"] == tokens.count_text(content)
        s = post(http, "huge_body_mb=0.2", stream=True)
        text = streamed_text(s.text)
        assert len(text) > 200_000 and chunks(s.text)[-1]["usage"]["completion_tokens"] == tokens.count_text(text)
        billed = http.get("/stats").json()["completion_tokens"]
        assert billed == body["usage"]["completion_tokens"] + tokens.count_text(text)


def test_fault_control_keys(fresh):
    with httpx.Client(base_url=fresh.url) as http:
        cfg = http.post("/control", json={"no_done": True, "bad_usage": "list", "fewer_choices": 2}).json()
        assert (cfg["no_done"], cfg["bad_usage"], cfg["max_n"]) == (True, "list", 2)
        r = http.post("/v1/chat/completions", json={"model": "sim", "messages": Q, "stream": True, "n": 3})
        assert "[DONE]" not in r.text and {c["choices"][0]["index"] for c in chunks(r.text) if c["choices"]} == {0, 1}
        assert http.post("/control", json={"bad_usage": "weird"}).status_code == 400
    with pytest.raises(ValueError):
        SimConfig(retry_after_s=-1)
