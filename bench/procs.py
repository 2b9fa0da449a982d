"""Processes under test: start on loopback, wait for health, read CPU and RSS from /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


@dataclass
class Proc:
    name: str
    cmd: list[str]
    port: int
    health: str = "/health"
    env: dict[str, str] = field(default_factory=dict)
    log_path: str = ""
    popen: subprocess.Popen | None = None
    started: float = 0.0
    ready_s: float | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, timeout: float = 90.0) -> Proc:
        """Spawn and wait until GET health answers 200; ready_s = spawn -> first 200."""
        log = open(self.log_path or os.devnull, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      cwd=ROOT, start_new_session=True)
        log.close()
        url = f"http://127.0.0.1:{self.port}{self.health}"
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; see {self.log_path}")
            if http_ok(url, 0.5):
                self.ready_s = time.perf_counter() - self.started
                return self
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f}s; see {self.log_path}")

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> float:
        return rss_mb(self.pid)

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGINT (uvicorn shuts down cleanly), then SIGKILL of its own process group if it lingers."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


def python() -> str:
    return sys.executable


def simulator(port: int, log_path: str) -> Proc:
    return Proc("simulator", [python(), "-m", "proxy", "simulate", "--host", "127.0.0.1", "--port", str(port),
                              "--seed", "1"], port, log_path=log_path)


def itsproxy(port: int, config_path: str, log_path: str, env: dict[str, str] | None = None) -> Proc:
    return Proc("itsproxy", [python(), "-m", "proxy", "serve", "--config", config_path, "--host", "127.0.0.1",
                             "--port", str(port)], port, env=env or {}, log_path=log_path)
