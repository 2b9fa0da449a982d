"""What can be checked of the container without a Docker engine: the files it copies exist and
are what the package build needs, and its start command serves with an API key from the
environment, run as an unprivileged user from a read-only copy of /app with the image's ENV and
working directory (the one writable place), then drains and exits on SIGTERM."""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import httpx
import pytest

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


def instructions(name: str) -> list[str]:
    """The arguments of every `name` instruction, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile())
    return [line.split(None, 1)[1] for line in text.splitlines() if line.split(None, 1)[:1] == [name]]


def image_env() -> dict[str, str]:
    env = {}
    for args in instructions("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def cmd_argv() -> list[str]:
    cmd = re.search(r'^CMD \[(.*)\]', dockerfile(), re.M).group(1)
    return [a.strip().strip('"') for a in cmd.split(",")]


def test_the_build_gets_what_pyproject_needs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {src for args in instructions("COPY") for src in args.split()[:-1]}
    needed = {"pyproject.toml", project["project"]["readme"], *project["project"]["license-files"],
              *project["tool"]["setuptools"]["package-dir"].values()}
    assert needed <= copied, f"the image's `pip install .` lacks {needed - copied}"
    config = cmd_argv()[cmd_argv().index("--config") + 1]
    assert any(args.split()[-1] == config for args in instructions("COPY")), "CMD's --config is never copied"


def test_the_working_directory_is_the_one_writable_volume():
    workdir, volumes = instructions("WORKDIR")[-1], instructions("VOLUME")
    assert any(workdir in v for v in volumes), "state and traces land in the working directory: make it a volume"
    user = re.search(r"^USER (\w+)", dockerfile(), re.M).group(1)
    assert re.search(rf"chown {user}(:{user})? {re.escape(workdir)}", dockerfile())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unprivileged_user() -> pwd.struct_passwd:
    """A system user for the test (made once with useradd); needs root, as CI has."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the container test runs as root in CI (it switches to an unprivileged user)")
        pytest.skip("needs root to run the image's command as an unprivileged user")
    try:
        return pwd.getpwnam("itsproxy-test")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "itsproxy-test"],
                       check=True)
        return pwd.getpwnam("itsproxy-test")


def as_user(user: pwd.struct_passwd, argv: list[str]) -> list[str]:
    # The user's own uid/gid, no root privilege but reading: the interpreter of this checkout may
    # live where only root can read (pyenv under /root); the image's is world-readable. Writing
    # anywhere but the working directory still fails, which is what this test is about.
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            "--inh-caps=-all,+dac_read_search", "--ambient-caps=-all,+dac_read_search",
            "--bounding-set=-all,+dac_read_search", *argv]


@pytest.fixture
def image_dirs():
    """/app (root-owned, read-only) and the working directory (owned by the unprivileged user)."""
    user = unprivileged_user()
    top = Path(tempfile.mkdtemp(prefix="itsproxy-image-", dir="/tmp"))
    app, work = top / "app", top / "var-lib-itsproxy"
    app.mkdir()
    work.mkdir()
    os.chown(work, user.pw_uid, user.pw_gid)
    top.chmod(0o755)
    yield user, app, work
    shutil.rmtree(top)


def wait_in_flight(url: str, auth: dict[str, str]) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/v1/its/stats", headers=auth).json()["inflight"] < 1:
        assert time.monotonic() < deadline, "the request never showed as in flight"
        time.sleep(0.01)


def test_start_command_serves_read_only_as_its_user_and_drains(image_dirs):
    user, app, work = image_dirs
    argv = cmd_argv()
    assert argv[:2] == ["itsproxy", "serve"]
    sim_port, port = free_port(), free_port()
    # The shipped config; its simulator on a free port and 300 ms slow, so a request stays in flight.
    config = (ROOT / "config.yaml").read_text().replace("4101", str(sim_port))
    assert config.count("model: openai/sim\n") == 1
    (app / "config.yaml").write_text(config.replace("model: openai/sim\n", "model: openai/sim@latency_ms=300\n"))
    for path in (app / "config.yaml", app):
        path.chmod(0o444 if path.is_file() else 0o555)  # root-owned and read-only, as in the image
    argv = [a.replace("/app/config.yaml", str(app / "config.yaml")) for a in argv]
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--host") + 1] = "127.0.0.1"  # the image's 0.0.0.0, kept off this shared machine's network
    exe = Path(sys.executable).with_name("itsproxy")
    env = {**image_env(), "ITS_API_KEY": "sk-container-test", "HOME": str(work),
           "PATH": f"{exe.parent}:/usr/local/bin:/usr/bin:/bin"}
    workdir = instructions("WORKDIR")[-1]
    cwd = {"/app": app}.get(workdir, work)  # the image's working directory, as copied here
    proc = subprocess.Popen(as_user(user, [str(exe), *argv[1:]]), cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
        auth = {"authorization": "Bearer sk-container-test"}
        ok = httpx.get(f"{url}/v1/models", headers=auth)
        assert ok.status_code == 200
        body = {"model": "math-vote", "messages": [{"role": "user", "content": "What is 2 + 3?"}], "seed": 1}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=auth, timeout=60).status_code == 200

        # SIGTERM while a request is in flight: it still gets its answer, then the server exits.
        answers: list[int] = []
        inflight = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{url}/v1/chat/completions", json={**body, "seed": 2}, headers=auth, timeout=60).status_code))
        inflight.start()
        wait_in_flight(url, auth)
        proc.send_signal(signal.SIGTERM)
        inflight.join(timeout=60)
        assert answers == [200]
        # uvicorn re-raises the signal once drained: "killed by SIGTERM" (exit 143 in Docker) is a clean stop.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), proc.stderr.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert sorted(p.name for p in app.iterdir()) == ["config.yaml"]
    written = [p for p in work.rglob("*") if p.is_file()]
    assert any(p.name.startswith("traces") for p in written), "traces were not written in the working directory"
    assert all(p.stat().st_uid == user.pw_uid for p in written)
