"""Peers measured in the same run against the same simulator, when installed.

Neither is a project dependency. Found through an environment variable, or a
separate venv under /tmp/peers (see bench/README.md for how to make one):

    ITSPROXY_BENCH_LITELLM=/path/to/bin/litellm   (LiteLLM proxy: litellm[proxy])
    ITSPROXY_BENCH_OPTILLM=/path/to/bin/optillm   (OptiLLM)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

from bench.procs import Proc
from bench.scenarios import CLIENT_KEY, KEY, write_yaml

OFFLINE = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true",
           "LITELLM_DISABLE_LATEST_RELEASE_CHECK": "true", "LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True"}


@dataclass
class Peer:
    name: str
    exe: str | None  # None: not installed
    version: str = ""
    models: dict[str, str] = field(default_factory=dict)  # scenario key -> model name the peer serves it as
    why_missing: str = "not installed"


def _find(env: str, venv_bin: str) -> str | None:
    path = os.environ.get(env)
    if path:
        return path if os.access(path, os.X_OK) else None
    if os.access(venv_bin, os.X_OK):
        return venv_bin
    return None


def _version(exe: str, package: str) -> str:
    py = os.path.join(os.path.dirname(exe), "python")
    try:
        out = subprocess.run([py, "-c", f"import importlib.metadata as m; print(m.version('{package}'))"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def litellm_peer() -> Peer:
    exe = _find("ITSPROXY_BENCH_LITELLM", "/tmp/peers/litellm/bin/litellm")
    peer = Peer("LiteLLM proxy", exe, models={"pass": "sim", "pass-stream": "sim"})
    if exe:
        peer.version = _version(exe, "litellm")
        if peer.version.startswith("1.107."):  # never compare against 1.107.x
            peer.exe, peer.why_missing = None, f"{peer.version} skipped"
    return peer


def optillm_peer() -> Peer:
    exe = _find("ITSPROXY_BENCH_OPTILLM", "/tmp/peers/optillm/bin/optillm") or shutil.which("optillm")
    peer = Peer("OptiLLM", exe, models={"pass": "none-sim", "pass-stream": "none-sim",
                                        "sc": "self_consistency-sim"})
    if exe:
        peer.version = _version(exe, "optillm")
    return peer


def start_litellm(peer: Peer, port: int, sim_url: str, workdir: str) -> Proc:
    config = {"model_list": [{"model_name": "sim", "litellm_params": {
        "model": "openai/sim", "api_base": f"{sim_url}/v1", "api_key": KEY}}],
        "litellm_settings": {"telemetry": False, "drop_params": False},
        "general_settings": {"master_key": CLIENT_KEY}}
    path = write_yaml(os.path.join(workdir, "litellm.yaml"), config)
    assert peer.exe
    proc = Proc("litellm", [peer.exe, "--config", path, "--host", "127.0.0.1", "--port", str(port),
                            "--num_workers", "1"], port, health="/health/liveliness", env=OFFLINE,
                log_path=os.path.join(workdir, "litellm.log"))
    return proc.start(timeout=120)


def start_optillm(peer: Peer, port: int, sim_url: str, workdir: str) -> Proc:
    assert peer.exe
    env = {"OPENAI_API_KEY": KEY, **OFFLINE}
    cmd = [peer.exe, "--base-url", f"{sim_url}/v1", "--host", "127.0.0.1", "--port", str(port), "--log", "warning",
           "--optillm-api-key", CLIENT_KEY]
    proc = Proc("optillm", cmd, port, env=env, log_path=os.path.join(workdir, "optillm.log"))
    return proc.start(timeout=180)
