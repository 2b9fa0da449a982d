"""Decision traces: real loopback requests through the proxy, real processes racing on one file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import openai
import pytest

from itsproxy.proxy.cli import main as cli_main
from itsproxy.proxy.config_fields import ConfigError
from itsproxy.proxy.telemetry.traces import (
    TraceFile,
    TraceHook,
    TraceSettings,
    TraceWriter,
    build_trace_hook,
    parse_traces,
    redact,
)
from tests.conftest import KEY, PASS_ROUTE

CHECKED = {"name": "checked", "match": {"model": "math-checked"}, "generate": {"model": "sim", "n": 3, "temperature": 0.8},
           "select": [{"check": {"python": "itsproxy.proxy.demo_checks:check_sum"}}, {"vote": {"extract": "number"}}],
           "repair": {"rounds": 1}, "on_unverified": "best_effort", "limits": {"timeout_s": 20}}
BROKEN = {"name": "broken", "match": {"model": "broken"}, "generate": {"model": "sim-broken", "n": 2},
          "select": [{"vote": {"extract": "number"}}], "limits": {"timeout_s": 20}}


def traced(make_proxy, sim, tmp_path: Path, **traces):
    """A proxy whose services carry a trace hook (added here unless the lead already wires it)."""
    cfg = {"routes": [CHECKED, BROKEN, PASS_ROUTE], "traces": {"path": str(tmp_path / "traces.jsonl"), **traces}}
    proxy = make_proxy(cfg, sim)
    hooks = proxy.services.hooks
    hook = next((h for h in hooks if isinstance(h, TraceHook)), None)
    if hook is None:
        hook = build_trace_hook(proxy.services.config)
        hooks.append(hook)
    return proxy, hook


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def export(capsys, *args: str) -> tuple[list[dict], str]:
    assert cli_main(["traces", "export", *args]) == 0
    out, err = capsys.readouterr()
    return [json.loads(line) for line in out.splitlines()], err


# ---------------------------------------------------------------- end to end


def test_records_per_request_with_evidence_and_no_secrets(make_proxy, sim, tmp_path, capsys):
    proxy, hook = traced(make_proxy, sim, tmp_path)
    questions = [f"What is {a} + {b}?" for a, b in [(17, 25), (120, 33), (9, 91), (404, 17), (61, 38)]]
    for q in questions:
        proxy.client.chat.completions.create(
            model="math-checked", messages=[{"role": "user", "content": f"{q} (my key is {KEY})"}])
    proxy.client.chat.completions.create(model="plain", messages=[{"role": "user", "content": "What is 1 + 1?"}])
    with pytest.raises(openai.APIStatusError) as err:
        proxy.client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "What is 2 + 2?"}])
    assert hook.flush()

    path = tmp_path / "traces.jsonl"
    assert KEY not in path.read_text()  # redacted even though a client sent it in a message
    recs = lines(path)
    ok = [r for r in recs if r["status"] == 200]
    assert len(ok) == len(questions) and {r["route"] for r in ok} == {"checked"}  # passthrough off by default
    for r in ok:
        assert r["id"].startswith("chatcmpl-its-") and r["model"] == "math-checked"
        assert r["request"]["messages"][0]["content"].endswith("(my key is [redacted])")
        assert len(r["candidates"]) >= 3 and r["usage"]["total"]["total_tokens"] > 0
        assert any(c["index"] == r["selected"] for c in r["candidates"])
        for c in r["candidates"]:
            assert c["message"]["role"] == "assistant"
            assert c["verdicts"][0]["checker"] == "python:itsproxy.proxy.demo_checks:check_sum"
        assert isinstance(r["verified"], bool) and isinstance(r["rounds"], list) and "votes" in r
    failed = [r for r in recs if r["status"] != 200]
    assert [(r["route"], r["status"]) for r in failed] == [("broken", err.value.status_code)]
    assert failed[0]["usage"]["calls"] >= 1 and "candidates" not in failed[0]
    hook.close()


def test_verified_only_export_from_live_traces(make_proxy, sim, tmp_path, capsys):
    proxy, hook = traced(make_proxy, sim, tmp_path, include_passthrough=True)
    for a in range(10, 18):
        proxy.client.chat.completions.create(model="math-checked",
                                             messages=[{"role": "user", "content": f"What is {a} + {a * 3}?"}])
    proxy.client.chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}])
    assert hook.flush()
    recs = lines(tmp_path / "traces.jsonl")
    assert any(r["passthrough"] for r in recs)  # included on request
    verified = [r for r in recs if r.get("verified") is True]
    assert verified, "the checker + repair route should verify most sums"

    rows, err = export(capsys, "--input", str(tmp_path / "traces.jsonl"), "--verified-only")
    assert len(rows) == len(verified) and "0 malformed" in err
    for row, rec in zip(rows, verified):
        *prompt, answer = row["messages"]
        assert prompt == rec["request"]["messages"] and answer["role"] == "assistant"
        a, b = map(int, prompt[0]["content"][8:-1].split(" + "))
        assert str(a + b) in answer["content"]  # verified answers are right answers

    labelled, _ = export(capsys, "--input", str(tmp_path / "traces.jsonl"), "--format", "verifier")
    assert labelled and {r["label"] for r in labelled} <= {0, 1}
    assert sum(r["label"] for r in labelled) >= len(verified)
    hook.close()


# ---------------------------------------------------------------- config, redaction


def test_config_errors_name_the_key():
    assert parse_traces(None) is None and parse_traces({"max_bytes": 4096}) is None  # no path: off
    for raw, key in [({"path": "t", "max_bytes": -1}, "traces.max_bytes"), ({"path": "t", "colour": 1}, "traces.colour"),
                     ({"path": 3}, "traces.path"), ({"path": "t", "include_passthrough": "yes"},
                                                     "traces.include_passthrough"),
                     ({"path": "t", "retention_days": 0}, "traces.retention_days")]:
        with pytest.raises(ConfigError) as exc:
            parse_traces(raw)
        assert exc.value.path == key


def test_redaction_drops_credential_keys_and_keeps_token_counts():
    rec = {"api_key": "x", "Authorization": "Bearer y", "access_token": "z", "clientSecret": "s", "password": "p",
           "headers": [{"x-api-key": "k", "note": f"bearer {KEY}!"}], "usage": {"prompt_tokens": 3, "max_tokens": 9},
           "short": "none of these", "exact": "none"}
    out = redact(rec, [KEY, "none"])
    assert out == {"headers": [{"note": "bearer [redacted]!"}], "usage": {"prompt_tokens": 3, "max_tokens": 9},
                   "short": "none of these", "exact": "[redacted]"}


# ---------------------------------------------------------------- the file


WRITER = textwrap.dedent("""
    import os, sys, time
    from itsproxy.proxy.telemetry.traces import TraceSettings, TraceWriter
    path, proc, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    w = TraceWriter(TraceSettings(path=path, max_bytes=20000, keep_files=1000, queue_size=count))
    open(f"{path}-ready{proc}", "w").close()
    while not os.path.exists(path + "-go"):  # start together, so the writers really race
        time.sleep(0.001)
    for i in range(count):
        assert w.submit({"proc": proc, "seq": i, "pad": "x" * (i * 37 % 400), "text": "line\\nbreak"})
        if i % 8 == 0:
            time.sleep(0.0005)  # small batches: many lock hand-overs and rotations mid-race
    w.close()
    assert w.written == count and not w.errors
""")


def test_concurrent_processes_rotate_without_splitting_lines(tmp_path):
    path = tmp_path / "traces.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(p), "500"], cwd=Path(__file__).parents[1])
             for p in range(4)]
    deadline = time.monotonic() + 30
    while not all(Path(f"{path}-ready{p}").exists() for p in range(4)) and time.monotonic() < deadline:
        time.sleep(0.01)
    Path(f"{path}-go").touch()
    assert [p.wait(60) for p in procs] == [0] * 4
    files = [path] + [Path(f"{path}.{n}") for n in range(1, 1000) if Path(f"{path}.{n}").exists()]
    assert len(files) > 5  # rotated by size into numbered files
    seen = set()
    for f in files:
        data = f.read_bytes()
        assert data.endswith(b"\n") and os.path.getsize(f) <= 20000
        for line in data.splitlines():
            rec = json.loads(line)  # every line whole: no split or interleaved bytes
            seen.add((rec["proc"], rec["seq"]))
            assert rec["text"] == "line\nbreak"
    assert seen == {(p, i) for p in range(4) for i in range(500)}


def test_retention_and_keep_files(tmp_path):
    path = str(tmp_path / "traces.jsonl")
    old = time.time() - 40 * 86400
    for n in range(1, 5):
        Path(f"{path}.{n}").write_text(f'{{"n": {n}}}\n')
    os.utime(f"{path}.3", (old, old))
    w = TraceWriter(TraceSettings(path=path, max_bytes=1024, keep_files=3, retention_days=30))  # startup prune
    assert w.flush()
    w.close()
    assert sorted(p.name for p in tmp_path.glob("traces.jsonl.*") if not p.name.endswith("lock")) == \
        ["traces.jsonl.1", "traces.jsonl.2"]  # .3 too old, .4 beyond keep_files

    os.utime(f"{path}.1", (old, old))
    f = TraceFile(TraceSettings(path=path, max_bytes=1024, keep_files=3, retention_days=30))
    f.append([b'{"a": "' + b"y" * 900 + b'"}\n'] * 3)  # two rotations: .1 (old) shifts to .3, then pruned
    names = sorted(p.name for p in tmp_path.glob("traces.jsonl.*") if not p.name.endswith("lock"))
    assert names == ["traces.jsonl.1", "traces.jsonl.2"]
    assert json.loads(Path(f"{path}.1").read_text())["a"].startswith("y")


def test_full_queue_drops_instead_of_waiting(tmp_path):
    w = TraceWriter(TraceSettings(path=str(tmp_path / "t.jsonl"), queue_size=1))
    started = time.monotonic()
    results = [w.submit({"i": i}) for i in range(2000)]
    assert time.monotonic() - started < 1.0
    assert w.dropped == results.count(False) > 0
    w.close()


# ---------------------------------------------------------------- export


def _rec(i: int, verified, status=200, ts="2999-01-01T00:00:00+00:00") -> str:
    msg = {"role": "assistant", "content": f"The answer is {i}."}
    if i == 3:
        msg = {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                                     "function": {"name": "f", "arguments": "{}"}}]}
    return json.dumps({"ts": ts, "status": status, "verified": verified, "selected": 1,
                       "request": {"messages": [{"role": "user", "content": f"q{i}"}]},
                       "candidates": [{"index": 0, "message": {"role": "assistant", "content": "no"},
                                       "verdicts": [{"checker": "c", "passed": False, "hard": True}]},
                                      {"index": 1, "message": msg,
                                       "verdicts": [{"checker": "c", "passed": bool(verified), "hard": True}]}]})


def test_export_reads_rotations_skips_malformed_and_filters(tmp_path, capsys):
    path = tmp_path / "traces.jsonl"
    Path(f"{path}.2").write_text(_rec(1, True) + "\n" + "{not json\n")
    Path(f"{path}.1").write_text(_rec(2, False) + "\n" + _rec(3, True) + "\n[1, 2]\n")
    path.write_text(_rec(4, True, ts="2000-01-01T00:00:00+00:00") + "\n" + _rec(5, True, status=422) + "\n"
                    + '{"truncated": ')
    rows, err = export(capsys, "--input", str(path), "--verified-only")
    assert [r["messages"][0]["content"] for r in rows] == ["q1", "q3", "q4"]  # oldest file first
    assert rows[1]["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    assert "3 malformed" in err

    rows, _ = export(capsys, "--input", str(path), "--since-days", "30")
    assert [r["messages"][0]["content"] for r in rows] == ["q1", "q2", "q3"]  # q4 expired, q5 failed

    out = tmp_path / "verifier.jsonl"
    assert cli_main(["traces", "export", "--input", str(path), "--format", "verifier", "--output", str(out)]) == 0
    labels = [(r["prompt"][0]["content"], r["label"]) for r in lines(out)]
    assert ("q1", 1) in labels and ("q1", 0) in labels and ("q2", 0) in labels
