"""`itsproxy check-config` refuses every bad config with exit 2 and the key path (through
the real CLI, in a subprocess), and `itsproxy serve` runs what it accepts."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

SECRET = "sk-do-not-echo-7f3e"
BASE = "http://127.0.0.1:1/v1"
MODELS = [{"model_name": "m", "litellm_params": {"model": "openai/x", "api_base": BASE}}]
GOOD_ROUTE = {"name": "r", "match": {"model": "a"}, "generate": {"model": "m"}}


def cfg(**sections: Any) -> dict[str, Any]:
    return {"model_list": MODELS, **sections}


def route(**over: Any) -> dict[str, Any]:
    return {**GOOD_ROUTE, **over}


def check(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [route(generate={"model": "m", "n": 3}, select=[{"check": spec}, {"vote": {"extract": "number"}}])]


@dataclass
class Case:
    id: str
    config: dict[str, Any] | str | bytes  # a dict is dumped as YAML; str/bytes are the file itself
    path: str  # the key path (or file position) the message must name
    words: str = ""
    env: dict[str, str] = field(default_factory=dict)


CASES = [
    Case("budgets-unknown-key", cfg(budgets={"bogus_key": 1}), "budgets.bogus_key", "unknown key"),
    Case("budgets-negative", cfg(budgets={"tokens_per_day": -5}), "budgets.tokens_per_day", ">= 1"),
    Case("budgets-literal-key-nan", "model_list: " + yaml.safe_dump(MODELS, default_flow_style=True)
         + f"budgets: {{keys: {{{SECRET}: {{cost_usd_per_day: .nan}}}}}}\n", "budgets.keys[0].cost_usd_per_day",
         "finite"),
    Case("simulator-unknown-key", cfg(simulator={"bogus": 1}), "simulator.bogus", "unknown key"),
    Case("simulator-out-of-range", cfg(simulator={"fail_rate": 2}), "simulator.fail_rate", "within [0, 1]"),
    Case("simulator-type", cfg(simulator={"latency_ms": "slow"}), "simulator.latency_ms", "number"),
    Case("simulator-port", cfg(simulator={"port": 70000}), "simulator.port", "TCP port"),
    Case("server-timeout-nan", "model_list: " + yaml.safe_dump(MODELS, default_flow_style=True)
         + "server: {upstream_timeout_s: .nan}\n", "server.upstream_timeout_s", "finite"),
    Case("server-timeout-inf", "model_list: " + yaml.safe_dump(MODELS, default_flow_style=True)
         + "server: {upstream_queue_timeout_s: .inf}\n", "server.upstream_queue_timeout_s", "finite"),
    Case("server-timeout-zero", cfg(server={"upstream_timeout_s": 0}), "server.upstream_timeout_s", "> 0"),
    Case("server-keepalive-negative", cfg(server={"keepalive_s": -1}), "server.keepalive_s", "> 0"),
    Case("route-timeout-inf", cfg(routes=[route(limits={"timeout_s": float("inf")})]),
         "routes[0].limits.timeout_s", "finite"),
    Case("route-temperature-nan", cfg(routes=[route(generate={"model": "m", "temperature": float("nan")})]),
         "routes[0].generate.temperature", "finite"),
    Case("checker-timeout-inf", cfg(routes=check({"python": "itsproxy.proxy.demo_checks:check_sum",
                                                   "timeout_s": float("inf")})),
         "routes[0].select[0].check.timeout_s", "finite"),
    Case("checker-timeout-negative", cfg(routes=check({"python": "itsproxy.proxy.demo_checks:check_sum",
                                                       "timeout_s": -1})),
         "routes[0].select[0].check.timeout_s", "positive"),
    Case("checker-missing-program", cfg(routes=check({"command": ["its-no-such-checker-xyz", "--flag"]})),
         "routes[0].select[0].check.command[0]", "not found on PATH"),
    Case("checker-env-unset", cfg(routes=check({"command": ["python", "-c", "pass"],
                                                "env": {"A": "os.environ/ITS_SURELY_UNSET_VAR"}})),
         "routes[0].select[0].check.env.A", "ITS_SURELY_UNSET_VAR is not set"),
    Case("duplicate-route-match", cfg(routes=[route(), route(name="r2")]), "routes[1].match.model",
         "already matched by routes[0]"),
    Case("duplicate-route-glob", cfg(routes=[route(match={"model": "x-*"}), route(name="r2", match={"model": "x-*"})]),
         "routes[1].match.model", "never be reached"),
    Case("env-empty", cfg(model_list=[{"model_name": "m", "litellm_params": {
        "model": "openai/x", "api_base": BASE, "api_key": "os.environ/ITS_TEST_EMPTY"}}]),
         "model_list[0].litellm_params.api_key", "ITS_TEST_EMPTY is set but empty", {"ITS_TEST_EMPTY": ""}),
    Case("env-unset", cfg(server={"api_keys": ["os.environ/ITS_SURELY_UNSET_VAR"]}), "server.api_keys[0]",
         "is not set"),
    Case("not-utf8", b"model_list:\n  - model_name: caf\xe9\n", "bad.yaml:2", "not UTF-8"),
    Case("yaml-syntax", f"model_list:\n  - model_name: m\n    litellm_params: {{api_key: {SECRET}, model: [\n",
         "bad.yaml:4:1", "not valid YAML"),
    Case("yaml-duplicate-key", f"budgets:\n  keys:\n    {SECRET}: {{}}\n    {SECRET}: {{}}\n", "bad.yaml:4:5",
         "written twice"),
    Case("deployment-rpm-zero", cfg(model_list=[{"model_name": "m", "litellm_params": {
        "model": "openai/x", "api_base": BASE, "rpm": 0}}]), "model_list[0].litellm_params.rpm", ">= 1"),
    Case("deployment-weight-negative", cfg(model_list=[{"model_name": "m", "litellm_params": {
        "model": "openai/x", "api_base": BASE, "weight": -1}}]), "model_list[0].litellm_params.weight", "> 0"),
    Case("wildcard-fill-mismatch", cfg(model_list=[{"model_name": "a/*", "litellm_params": {
        "model": "openai/*/*", "api_base": BASE}}]), "model_list[0].litellm_params.model", "has 2 `*`"),
    Case("wildcard-unreachable", cfg(model_list=[*MODELS, {"model_name": "openai/*", "litellm_params": {
        "model": "openai/*"}}], routes=[route(match={"model": "*"}, passthrough=True)]),
         "routes[0].match.model", "'*' catches every name"),
    Case("general-settings-other", cfg(general_settings={"database_url": "postgres://x"}),
         "general_settings.database_url", "budgets"),
    Case("litellm-settings-other", cfg(litellm_settings={"success_callback": ["langfuse"]}),
         "litellm_settings.success_callback", "traces"),
    Case("litellm-settings-disagree", cfg(server={"num_retries": 1}, litellm_settings={"num_retries": 3}),
         "litellm_settings.num_retries", "disagrees with server.num_retries"),
    Case("litellm-timeout-zero", cfg(litellm_settings={"request_timeout": 0}),
         "litellm_settings.request_timeout", "> 0"),
    Case("router-strategy", cfg(router_settings={"routing_strategy": "latency-based-routing"}),
         "router_settings.routing_strategy", "simple-shuffle"),
    Case("router-redis", cfg(router_settings={"redis_host": "localhost"}), "router_settings.redis_host", "server.state"),
    Case("traces-unknown-key", cfg(traces={"path": "t.jsonl", "colour": 1}), "traces.colour", "unknown key"),
    Case("top-level-unknown", cfg(enviroment_variables={}), "enviroment_variables", "unknown key"),
]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    exe = shutil.which("itsproxy", path=os.path.dirname(sys.executable))
    assert exe, "the itsproxy console script is installed beside this interpreter"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def write(tmp: Path, case: Case) -> Path:
    path = tmp / case.id / "bad.yaml"
    path.parent.mkdir()
    body = case.config
    if isinstance(body, dict):
        body = yaml.safe_dump(body)
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return path


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict[str, Path]]:
    """Every case through the real CLI, in one run (`check-config a.yaml b.yaml ...`)."""
    tmp = tmp_path_factory.mktemp("bad-configs")
    paths = {c.id: write(tmp, c) for c in CASES}
    env = {k: v for c in CASES for k, v in c.env.items()}
    return cli("check-config", *map(str, paths.values()), env=env), paths


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_check_config_refuses(checked, case):
    r, paths = checked
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert SECRET not in r.stderr + r.stdout
    prefix = f"{paths[case.id]}: config error: "
    lines = [line for line in r.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, r.stderr
    assert case.path in lines[0] and case.words in lines[0], lines[0]


def test_check_config_one_file_exit_code(tmp_path):
    bad = write(tmp_path, CASES[0])
    r = cli("check-config", str(bad))
    assert r.returncode == 2 and r.stderr.startswith("config error: budgets.bogus_key: unknown key"), r.stderr
    assert "Traceback" not in r.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepted_config(sim_port: int, tmp: Path) -> dict[str, Any]:
    """Every section, LiteLLM's included, in a form check-config accepts."""
    base = f"http://127.0.0.1:{sim_port}/v1"
    deployment = {"model": "openai/sim", "api_base": base, "api_key": "sk-sim"}
    return {
        "simulator": {"port": sim_port, "seed": 3, "latency_ms": 1, "boosts": {"step by step": 0.1}},
        "model_list": [
            {"model_name": "sim", "litellm_params": {**deployment, "rpm": 100, "weight": 2}},
            {"model_name": "sim", "litellm_params": {**deployment, "tpm": 100000}, "model_info": {"id": "second"}},
            {"model_name": "sim/*", "litellm_params": {**deployment, "model": "openai/*"}},
        ],
        "routes": [{"name": "vote", "match": {"model": "math"}, "generate": {"model": "sim", "n": 3},
                    "select": [{"vote": {"extract": "number"}}], "limits": {"timeout_s": 30}}],
        "server": {"state_dir": str(tmp / "state")},
        "budgets": {"tokens_per_day": 1_000_000, "keys": {"os.environ/ITS_TEST_MASTER": {"tokens_per_day": None}}},
        "traces": {"path": str(tmp / "traces.jsonl")},
        "general_settings": {"master_key": "os.environ/ITS_TEST_MASTER", "max_request_size_mb": 2},
        "litellm_settings": {"drop_params": True, "num_retries": 1, "request_timeout": 30},
        "router_settings": {"allowed_fails": 2, "cooldown_time": 10, "routing_strategy": "simple-shuffle"},
    }


def test_serve_runs_what_check_config_accepts(tmp_path):
    sim_port, port = free_port(), free_port()
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(accepted_config(sim_port, tmp_path)))
    env = {"ITS_TEST_MASTER": "sk-master-" + "1" * 8}
    r = cli("check-config", str(path), env=env)
    assert r.returncode == 0, r.stderr
    assert "3 deployments" in r.stdout and "auth on (1 key)" in r.stdout
    exe = shutil.which("itsproxy", path=os.path.dirname(sys.executable))
    proc = subprocess.Popen([exe, "serve", "--config", str(path), "--port", str(port)],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/v1"
        # general_settings.master_key is an API key: without it, 401; with it, served.
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=url, api_key=env["ITS_TEST_MASTER"], max_retries=0, timeout=30)
        ask = [{"role": "user", "content": "What is 2 + 3?"}]
        assert client.chat.completions.create(model="sim", messages=ask).choices[0].message.content
        assert client.chat.completions.create(model="math", messages=ask).choices[0].message.content
        wild = client.chat.completions.create(model="sim/sim", messages=ask)  # the wildcard entry
        assert wild.choices[0].message.content
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
