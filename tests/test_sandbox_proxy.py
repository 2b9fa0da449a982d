"""End to end: no configured secret leaves the proxy through a hostile checker, a verifier or an upstream."""

from __future__ import annotations

import json
import secrets
import subprocess
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from conftest import KEY, send_json, sim_models

SERVER_KEY = "sk-server-key-77aa01"
ENV_KEY = "sk-env-openai-5b5b02"  # a model key the config takes from the proxy's environment
CHECK_TOKEN = "sk-check-token-9c9c03"  # given to the checker through its `env`
UNCONFIGURED = "sk-unconfigured-zz04"  # in the proxy's environment, named nowhere in the config
VERIFIER_TOKEN = "sk-verifier-token-1234ab"
ALL = (KEY, SERVER_KEY, ENV_KEY, CHECK_TOKEN, UNCONFIGURED, VERIFIER_TOKEN)

HOSTILE = textwrap.dedent("""
    import glob, json, os, socket, subprocess, sys
    payload = json.load(sys.stdin)
    port = int(payload["messages"][0]["content"].split("port ")[1].split()[0])
    out = {"env": dict(os.environ), "environ": []}
    for f in glob.glob("/proc/*/environ"):
        try:
            out["environ"].append(open(f, "rb").read().decode(errors="replace"))
        except OSError as e:
            out["environ"].append(type(e).__name__)
    for path in sys.argv[1:3]:
        try:
            out[path] = open(path).read() if os.path.isfile(path) else os.listdir(path)
        except OSError as e:
            out[path] = type(e).__name__
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        out["net"] = "connected"
    except OSError as e:
        out["net"] = type(e).__name__
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", sys.argv[3]], start_new_session=True)
    print(json.dumps(out))
    sys.exit(1)
""")


class Recorder:
    """An upstream that forwards to the simulator and keeps every request body it was sent."""

    def __init__(self, target: str) -> None:
        self.bodies: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.bodies.append(body.decode())
                r = httpx.post(target + self.path, content=body, headers={"content-type": "application/json"})
                send_json(self, r.status_code, r.content)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder(fresh_sim):
    rec = Recorder(fresh_sim.url)
    yield rec
    rec.stop()


def leaks(text: str) -> list[str]:
    return [s for s in ALL if s in text]


def gone(marker: str) -> bool:
    for _ in range(100):
        if subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1:
            return True
        time.sleep(0.05)
    return False


def test_hostile_checker_leaks_nothing(make_proxy, fresh_sim, recorder, tmp_path, monkeypatch, caplog):
    caplog.set_level("DEBUG")
    for name, value in (("ITS_SBX_OPENAI_KEY", ENV_KEY), ("ITS_SBX_CHECK", CHECK_TOKEN),
                        ("ITS_SBX_UNCONFIGURED", UNCONFIGURED)):
        monkeypatch.setenv(name, value)
    state = tmp_path / "state"
    state.mkdir()
    (state / "keys").write_text(KEY)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"api_key: {KEY}\n")
    marker = f"its-sbx-{secrets.token_hex(6)}"
    models = [{"model_name": "rec", "litellm_params": {"model": "openai/sim", "api_base": f"{recorder.url}/v1",
                                                       "api_key": "os.environ/ITS_SBX_OPENAI_KEY"}},
              *sim_models(fresh_sim.url)]
    check = {"command": ["python", "-c", HOSTILE, str(config_file), str(state), marker],
             "env": {"CHECK_TOKEN": "os.environ/ITS_SBX_CHECK"}, "timeout_s": 30}
    route = {"name": "hostile", "match": {"model": "hostile"}, "generate": {"model": "rec", "n": 2},
             "select": [{"check": check}], "repair": {"rounds": 1}, "on_unverified": "best_effort"}
    trace = tmp_path / "traces.jsonl"
    p = make_proxy({"model_list": models, "routes": [route], "traces": {"path": str(trace)},
                    "server": {"api_keys": [SERVER_KEY], "state_dir": str(state)}}, fresh_sim, api_key=SERVER_KEY)

    port = p.handle.url.rsplit(":", 1)[1]
    r = p.http.post("/v1/chat/completions", headers={"authorization": f"Bearer {SERVER_KEY}"},
                    json={"model": "hostile", "messages": [{"role": "user", "content": f"What is 2 + 2? port {port} ."}]})
    assert r.status_code == 200 and r.headers["x-its-verified"] == "false"
    assert leaks(r.text) == []
    its = r.json()["its"]
    critiques = [v["critique"] for e in its["evidence"] for v in e["verdicts"]]
    assert len(critiques) == 4  # two candidates, two rounds
    seen = json.loads(critiques[0])
    assert seen["env"]["CHECK_TOKEN"] == "[redacted]"  # its own env, which it may see, is redacted on the way out
    assert seen["net"] != "connected"
    assert seen[str(config_file)] == "FileNotFoundError" and seen[str(state)] == "FileNotFoundError"
    assert not any("ITS_SBX" in e for e in seen["environ"])  # no proxy process in its /proc

    repairs = [b for b in recorder.bodies if "did not pass verification" in b]
    assert repairs and "[redacted]" in repairs[0]
    assert leaks("\n".join(recorder.bodies)) == []
    assert p.services.trace_hook.flush()
    assert trace.read_text() and leaks(trace.read_text()) == []
    assert leaks(caplog.text) == []
    assert gone(marker)


class Verifier(BaseHTTPRequestHandler):
    """Refuses every request, echoing the credential it was sent (as careless services do)."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["content-length"]))
        auth = self.headers.get("authorization", "")
        body = {"error": f"token {auth.split()[-1]} rejected (header was {auth!r})"}
        send_json(self, 401, json.dumps(body).encode())

    def log_message(self, *args):
        pass


def test_verifier_echoing_its_token_leaks_nothing(make_proxy, fresh_sim, tmp_path, monkeypatch):
    monkeypatch.setenv("ITS_SBX_VERIFIER", f"Bearer {VERIFIER_TOKEN}")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Verifier)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check = {"http": {"url": f"http://127.0.0.1:{server.server_port}/verify",
                          "headers": {"Authorization": "os.environ/ITS_SBX_VERIFIER"}}}
        route = {"name": "v", "match": {"model": "v"}, "generate": {"model": "sim", "n": 2},
                 "select": [{"check": check}], "on_unverified": "best_effort"}
        trace = tmp_path / "traces.jsonl"
        p = make_proxy({"routes": [route], "traces": {"path": str(trace)}}, fresh_sim)
        r = p.http.post("/v1/chat/completions", json={"model": "v", "messages": [{"role": "user", "content": "1+1?"}]})
        assert r.status_code == 200
        critique = r.json()["its"]["evidence"][0]["verdicts"][0]["critique"]
        assert "HTTP 401" in critique and "token [redacted] rejected" in critique
        assert leaks(r.text) == []
        assert p.services.trace_hook.flush() and leaks(trace.read_text()) == []
    finally:
        server.shutdown()
        server.server_close()


class EchoingUpstream(BaseHTTPRequestHandler):
    """An upstream whose 400 echoes the key it was given in message, param and code."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["content-length"]))
        key = self.headers.get("authorization", "").split()[-1]
        err = {"error": {"message": f"bad key {key}", "type": "invalid_request_error", "param": key, "code": key}}
        send_json(self, 400, json.dumps(err).encode())

    def log_message(self, *args):
        pass


def test_upstream_error_fields_are_redacted(make_proxy, sim):
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingUpstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        models = [{"model_name": "echo", "litellm_params": {
            "model": "openai/x", "api_base": f"http://127.0.0.1:{server.server_port}/v1", "api_key": KEY}}]
        route = {"name": "e", "match": {"model": "e"}, "generate": {"model": "echo", "n": 2}}
        p = make_proxy({"model_list": models, "routes": [route, {**route, "name": "pt", "match": {"model": "echo"},
                                                                 "passthrough": True}]}, sim)
        for model in ("e", "echo"):
            r = p.http.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 400 and leaks(r.text) == [], r.text
    finally:
        server.shutdown()
        server.server_close()
