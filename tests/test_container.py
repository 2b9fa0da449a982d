"""What can be checked of the container without a Docker engine: the files it copies
exist, and its start command serves with an API key from the environment."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_copied_files_exist():
    for line in dockerfile().splitlines():
        if line.startswith("COPY"):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"


def test_runs_as_non_root_with_a_healthcheck():
    text = dockerfile()
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "HEALTHCHECK" in text and "/health" in text
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_start_command_serves_with_key_from_env(tmp_path):
    cmd = re.search(r'^CMD \[(.*)\]', dockerfile(), re.M).group(1)
    argv = [a.strip().strip('"') for a in cmd.split(",")]
    assert argv[:2] == ["itsproxy", "serve"]
    sim_port, port = free_port(), free_port()
    config = (ROOT / "config.yaml").read_text().replace("4101", str(sim_port))
    (tmp_path / "config.yaml").write_text(config)
    argv = [a.replace("/app/config.yaml", str(tmp_path / "config.yaml")) for a in argv]
    argv[argv.index("--port") + 1] = str(port)
    exe = Path(sys.executable).with_name("itsproxy")
    env = {**os.environ, "ITS_API_KEY": "sk-container-test"}
    proc = subprocess.Popen([str(exe), *argv[1:]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the container command did not become healthy"
            time.sleep(0.1)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        ok = httpx.get(f"{url}/v1/models", headers={"authorization": "Bearer sk-container-test"})
        assert ok.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
