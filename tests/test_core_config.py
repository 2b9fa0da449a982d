"""Config validation: messages name the key path; the CLI exits 0 or 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from itsproxy.proxy.config import parse_config
from itsproxy.proxy.config_fields import ConfigError

MODELS = [{"model_name": "m", "litellm_params": {"model": "openai/x", "api_base": "http://127.0.0.1:1/v1"}}]


def cfg(**routes_and_more):
    return {"model_list": MODELS, **routes_and_more}


@pytest.mark.parametrize("data,path,words", [
    (cfg(routes=[{"name": "r", "match": {"model": "a"}, "generate": {"model": "nope"}}]),
     "routes[0].generate.model", "unknown model"),
    (cfg(routes=[{"name": "r", "match": {"model": "a"}, "generate": {"model": "m", "n": 0}}]),
     "routes[0].generate.n", ">= 1"),
    (cfg(routes=[{"name": "r", "match": {"model": "a"}, "generate": {"model": "m"},
                  "select": [{"vote": {"extract": "telepathy"}}]}]), "routes[0].select[0].vote.extract", "unknown"),
    (cfg(routes=[{"name": "r", "match": {"model": "a"}, "generate": {"model": "m"},
                  "select": [{"vote": {}, "check": {}}]}]), "routes[0].select[0]", "single-key"),
    (cfg(routes=[{"name": "r", "match": {"model": "a"}, "generate": {"model": "m"}, "colour": 1}]),
     "routes[0].colour", "unknown key"),
    (cfg(routes=[{"name": "r", "match": {"model": "a"}, "generate": {"model": "m"},
                  "select": [{"vote": {"extract": "regex"}}]}]), "routes[0].select[0].vote.pattern", "pattern"),
    (cfg(routes=[{"name": "r", "match": {"model": "a"}, "generate": {"model": "m"}, "limits": {"max_n": "x"}}]),
     "routes[0].limits.max_n", "integer"),
    (cfg(server={"api_keys": "k"}), "server.api_keys", "list"),
    ({"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/x",
                                                            "api_key": "os.environ/ITS_TEST_UNSET_VAR"}}]},
     "model_list[0].litellm_params.api_key", "ITS_TEST_UNSET_VAR is not set"),
    ({"model_list": [{"litellm_params": {"model": "x"}}]}, "model_list[0].model_name", "non-empty"),
    (cfg(routes=[{"name": "r", "match": {"model": "a"}, "generate": {"model": "m"}, "repair": {"rounds": 1}}]),
     "routes[0].repair", "check stage"),
])
def test_errors_name_the_key_path(data, path, words):
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert str(exc.value).startswith(path + ":"), str(exc.value)
    assert words in str(exc.value)


def test_env_references_resolve(monkeypatch):
    monkeypatch.setenv("ITS_TEST_KEY", "sk-from-env")
    c = parse_config({"model_list": [{"model_name": "m", "litellm_params": {
        "model": "openai/x", "api_key": "os.environ/ITS_TEST_KEY"}}]})
    assert c.models["m"].params["api_key"] == "sk-from-env"
    assert "sk-from-env" in c.secrets


def run_cli(*args, env=None):
    env = {**os.environ, "ITS_API_KEY": "sk-example", **(env or {})}
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_check_config_ok_on_the_examples():
    for path in ("config.yaml", "proxy/default_config.yaml"):
        r = run_cli("check-config", path)
        assert r.returncode == 0, r.stderr
        assert "routes" in r.stdout


def test_check_config_bad_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg(routes=[{"name": "r", "match": {"model": "a"},
                                               "generate": {"model": "m", "temperature": 9}}])))
    r = run_cli("check-config", str(bad))
    assert r.returncode == 2
    assert "routes[0].generate.temperature" in r.stderr


def test_check_config_unreadable_and_not_yaml(tmp_path):
    assert run_cli("check-config", str(tmp_path / "missing.yaml")).returncode == 2
    junk = tmp_path / "junk.yaml"
    junk.write_text("model_list: [unclosed")
    r = run_cli("check-config", str(junk))
    assert r.returncode == 2 and "not valid YAML" in r.stderr


def test_example_needs_its_key():
    r = run_cli("check-config", "config.yaml", env={"ITS_API_KEY": ""})
    assert r.returncode == 2 and "server.api_keys[0]: environment variable ITS_API_KEY is set but empty" in r.stderr
    env = {k: v for k, v in os.environ.items() if k != "ITS_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "proxy", "check-config", "config.yaml"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 2 and "server.api_keys[0]: environment variable ITS_API_KEY is not set" in r.stderr


def test_serve_refuses_public_host_without_keys():
    r = run_cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 2 and "api_keys" in r.stderr
