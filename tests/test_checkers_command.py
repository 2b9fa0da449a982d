"""The command checker: a sandboxed process that must fail closed."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from checker_helpers import PATH, QUESTION, cand, one, py, run
from itsproxy.strategies.checkers.build import build_checkers, check_candidates, payload_for

# ---------------------------------------------------------------- command


@pytest.mark.asyncio
async def test_command_demo_checks_pass_and_fail():
    spec = {"command": ["python", "-m", "itsproxy.proxy.demo_checks"], "timeout_s": 10}
    assert one(spec).name == "command:itsproxy.proxy.demo_checks"
    v = await run(spec, "so it is 42")
    assert v.passed and v.critique == "17 + 25 = 42, correct" and v.checker == "command:itsproxy.proxy.demo_checks"
    v = await run(spec, "The answer is 43.")
    assert not v.passed
    assert v.critique == "The answer 43 is wrong: 17 + 25 is not 43. Recompute the sum carefully."
    assert "42" not in v.critique  # never reveals the right answer


@pytest.mark.asyncio
async def test_command_timeout_kills_process_group(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    spec = py(f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pidfile)!r}, "w").write(str(p.pid))
        time.sleep(60)
    """, timeout_s=1, sandbox=False)  # unsandboxed: the process group is what dies
    t0 = time.monotonic()
    v = await run(spec)
    assert time.monotonic() - t0 < 5
    assert not v.passed and "timed out after 1s" in v.critique
    pid = int(pidfile.read_text())
    for _ in range(50):  # the grandchild was in the killed process group
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{pid}/stat") as f:  # a zombie awaiting its init reaper is dead too
            if f.read().split(") ")[1].startswith("Z"):
                break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("grandchild survived the timeout")


@pytest.mark.asyncio
async def test_command_crash_with_stderr():
    v = await run(py("import sys; sys.stderr.write('boom: bad things'); sys.exit(3)"))
    assert not v.passed and "exit code 3" in v.critique and "boom: bad things" in v.critique
    v = await run(py("raise ValueError('no stdout here')"))
    assert not v.passed and "exit code 1" in v.critique and "ValueError: no stdout here" in v.critique


@pytest.mark.asyncio
async def test_command_killed_by_signal():
    v = await run(py("import os, signal; print('partial', flush=True); os.kill(os.getpid(), signal.SIGTERM)"))
    assert not v.passed and "killed by signal SIGTERM" in v.critique and "partial" in v.critique


@pytest.mark.asyncio
async def test_command_cpu_limit():
    v = await run(py("while True: pass", timeout_s=10, cpu_s=1))
    assert not v.passed and "SIGXCPU" in v.critique


@pytest.mark.asyncio
async def test_command_exec_failure(tmp_path):
    # check-config refuses a missing program; one that disappears after load still fails closed
    program = tmp_path / "checker-binary"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    checker = one({"command": [str(program), "--x"]})
    program.unlink()
    v = await checker.check(payload_for(cand("The answer is 42.", None), QUESTION))
    assert not v.passed and "could not be started" in v.critique and "No such file" in v.critique


@pytest.mark.asyncio
async def test_command_hostile_output():
    v = await run(py("import sys; sys.stdout.write('x' * 60_000)", max_output_bytes=100_000))
    assert v.passed and len(v.critique) < 17 * 1024 and v.critique.endswith("[truncated]")
    v = await run(py("import sys; sys.stdout.write('x' * 10_000_000); sys.stderr.write('e' * 10_000_000)"))
    assert not v.passed and "output exceeded 65536 bytes" in v.critique
    v = await run(py(r"import sys; sys.stdout.buffer.write(b'bad \xff\xfe bytes \x80'); sys.exit(1)"))
    assert not v.passed and "\ufffd" in v.critique and "bad" in v.critique
    # a checker that ignores its (large) stdin still gets a verdict
    v = await run(py("print('ok')"), content="y" * 2_000_000)
    assert v.passed and v.critique == "ok"


@pytest.mark.asyncio
async def test_command_env_is_scrubbed(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("ITS_PASSED_ON", "forward-me")
    spec = py("import json, os; print(json.dumps(dict(os.environ)))",
              env={"EXTRA": "given", "PORT": 9000, "FWD": "forward-me"})
    v = await run(spec)
    assert v.passed, v.critique
    env = json.loads(v.critique)
    assert "sk-secret" not in v.critique and "OPENAI_API_KEY" not in env
    assert env["EXTRA"] == "given" and env["PORT"] == "9000" and env["FWD"] == "forward-me"
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "HOME", "PYTHONPATH", "PWD", "EXTRA", "PORT", "FWD"}
    assert env["HOME"] == "/tmp"  # the sandbox's private tmpfs
    assert os.getcwd() not in env["PYTHONPATH"].split(os.pathsep)  # the proxy's directory is not shown
    v = await run({**spec, "sandbox": False})  # unsandboxed: a temporary HOME, removed afterwards
    env = json.loads(v.critique)
    assert "OPENAI_API_KEY" not in env and env["FWD"] == "forward-me"
    assert env["HOME"] != os.path.expanduser("~") and not os.path.exists(env["HOME"])
    assert os.getcwd() in env["PYTHONPATH"].split(os.pathsep)


@pytest.mark.asyncio
async def test_command_memory_limit():
    v = await run(py("b = bytearray(2 * 1024 ** 3); print('allocated')", memory_mb=512))
    assert not v.passed and "MemoryError" in v.critique


@pytest.mark.asyncio
async def test_command_concurrency_cap(tmp_path):
    code = """
        import fcntl, os, time
        d = os.environ["COUNTER_DIR"]
        def bump(delta):
            with open(os.path.join(d, "lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                cur_p, max_p = os.path.join(d, "cur"), os.path.join(d, "max")
                cur = int(open(cur_p).read()) if os.path.exists(cur_p) else 0
                cur += delta
                open(cur_p, "w").write(str(cur))
                top = int(open(max_p).read()) if os.path.exists(max_p) else 0
                open(max_p, "w").write(str(max(top, cur)))
        bump(1)
        time.sleep(0.4)
        bump(-1)
    """
    # unsandboxed, so the runs can share a directory to count themselves in
    checkers = build_checkers(py(code, max_concurrency=2, env={"COUNTER_DIR": str(tmp_path)}, sandbox=False), PATH)
    cands = [cand(index=i) for i in range(6)]
    await check_candidates(checkers, cands, QUESTION)
    assert all(c.verified for c in cands), [c.verdicts for c in cands]
    assert int((tmp_path / "max").read_text()) == 2
    assert int((tmp_path / "cur").read_text()) == 0
