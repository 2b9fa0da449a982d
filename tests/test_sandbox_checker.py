"""The command checker's sandbox, checker by checker: what a hostile program can and cannot do."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess

import pytest

from checker_helpers import PATH, one, py, run
from itsproxy.strategies.types import SpecError

pytestmark = pytest.mark.asyncio


def gone(marker: str) -> bool:
    return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1


async def wait_gone(marker: str) -> bool:
    for _ in range(100):
        if gone(marker):
            return True
        await asyncio.sleep(0.05)
    return False


PROBE = """
    import glob, json, os, socket, sys
    out = {"uid": os.getuid(), "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
    envs = []
    for f in glob.glob("/proc/*/environ"):
        try:
            envs.append(open(f, "rb").read().decode(errors="replace"))
        except OSError as e:
            envs.append(type(e).__name__)
    out["environ"] = envs
    for path in sys.argv[1:3] + ["/etc/shadow", "/etc/passwd", "/root"]:
        try:
            out[path] = os.listdir(path) if os.path.isdir(path) else open(path).read()
        except OSError as e:
            out[path] = type(e).__name__
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[3])), timeout=2).close()
        out["net"] = "connected"
    except OSError as e:
        out["net"] = type(e).__name__
    print(json.dumps(out))
"""


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


async def test_sandbox_hides_the_proxy(tmp_path, monkeypatch, listener):
    monkeypatch.setenv("ITS_SBX_PROXY_ONLY", "sk-proxy-env-only-31f7")
    secret_file = tmp_path / "config.yaml"
    secret_file.write_text("api_key: sk-in-a-file-6d2e")
    v = await run(py(PROBE) | {"command": py(PROBE)["command"] + [str(secret_file), os.getcwd(), str(listener)]})
    assert v.passed, v.critique
    out = json.loads(v.critique)
    assert "sk-proxy-env-only-31f7" not in v.critique and "sk-in-a-file-6d2e" not in v.critique
    assert out["uid"] != 0 and os.getpid() not in out["pids"] and max(out["pids"]) < 10  # its own PID namespace
    assert all("ITS_SBX_PROXY_ONLY" not in e for e in out["environ"])
    assert out[str(secret_file)] == "FileNotFoundError"
    # the proxy's directory exists only as the parent of what is bound in it (the venv, the package)
    assert out[os.getcwd()] == "FileNotFoundError" or "config.yaml" not in out[os.getcwd()]
    assert out["/etc/shadow"] == "FileNotFoundError" and out["/etc/passwd"] == "FileNotFoundError"
    assert out["net"] != "connected"


async def test_network_only_when_the_route_allows_it(listener):
    code = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2); print('in')"
    spec = {"command": ["python", "-c", code, str(listener)]}
    v = await run(spec)
    assert not v.passed and "ConnectionRefusedError" in v.critique  # its own, empty loopback
    v = await run({**spec, "network": True})
    assert v.passed and v.critique == "in"


async def test_timeout_kills_setsid_grandchildren():
    marker = f"its-sbx-{secrets.token_hex(6)}"
    spec = py(f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "{marker}"], start_new_session=True)
        time.sleep(300)
    """, timeout_s=1)
    v = await run(spec)
    assert not v.passed and "timed out after 1s" in v.critique
    assert await wait_gone(marker)


async def test_children_holding_stdout_do_not_stall_a_pass():
    marker = f"its-sbx-{secrets.token_hex(6)}"
    spec = py(f"""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "{marker}"], start_new_session=True)
        print("fine")
    """, timeout_s=60)
    v = await run(spec)
    assert v.passed and v.critique == "fine"
    assert await wait_gone(marker)  # the PID namespace ended with the checker


async def test_unsandboxed_children_holding_stdout_do_not_stall_a_pass():
    marker = f"its-sbx-{secrets.token_hex(6)}"
    spec = py(f"""
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "{marker}"])
        print("fine")
    """, timeout_s=60, sandbox=False)
    v = await run(spec)
    assert v.passed and v.critique == "fine"
    assert await wait_gone(marker)  # same process group: killed after the main process exited


async def test_output_flood_is_a_failed_verdict():
    v = await run(py("import sys\nwhile True: sys.stdout.write('x' * 65536)", timeout_s=120, max_output_bytes=100_000))
    assert not v.passed and "output exceeded 100000 bytes" in v.critique
    v = await run(py("import sys\nwhile True: sys.stderr.write('e' * 65536)", timeout_s=120))
    assert not v.passed and "output exceeded 65536 bytes" in v.critique


async def test_process_limit():
    code = """
        import os, time
        n = 0
        try:
            for _ in range(200):
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                n += 1
        except OSError:
            pass
        print(n)
    """
    v = await run(py(code, max_processes=10, timeout_s=30))
    assert v.passed and int(v.critique) < 10


async def test_missing_sandbox_fails_closed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap to be found
    v = await run(py("print('ran')"))
    assert not v.passed and "sandbox unavailable" in v.critique and "bwrap" in v.critique
    v = await run(py("print('ran')", sandbox=False))  # the operator's explicit choice
    assert v.passed and v.critique == "ran"


async def test_files_are_shown_read_only(tmp_path):
    data = tmp_path / "facts.txt"
    data.write_text("42")
    code = """
        import sys
        print(open(sys.argv[1]).read())
        try:
            open(sys.argv[1], "w")
        except OSError as e:
            print(e)
    """
    v = await run(py(code, files=[str(data)]) | {"command": py(code)["command"] + [str(data)]})
    assert v.passed and "42" in v.critique and "Read-only file system" in v.critique
    script = tmp_path / "check.py"
    script.write_text("print('script ran')")
    v = await run({"command": ["python", str(script)]})  # a script named in the command is bound too
    assert v.passed and v.critique == "script ran"


@pytest.mark.parametrize("spec, key, words", [
    ({"sandbox": "yes"}, ".sandbox", "true or false"),
    ({"network": 1}, ".network", "true or false"),
    ({"max_processes": 0}, ".max_processes", "positive"),
    ({"max_output_bytes": -5}, ".max_output_bytes", "positive"),
    ({"files": "/etc"}, ".files", "list"),
    ({"files": ["relative/x"]}, ".files[0]", "absolute"),
    ({"files": ["/surely/not/here"]}, ".files[0]", "does not exist"),
    ({"sandbox": False, "network": True}, ".network", "sandboxed"),
])
async def test_sandbox_spec_errors(spec, key, words):
    with pytest.raises(SpecError) as exc:
        one({"command": ["true"], **spec})
    assert exc.value.path == PATH + key and words in exc.value.message
