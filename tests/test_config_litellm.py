"""A LiteLLM config, moved over: deployments, wildcards, general/litellm/router settings."""

from __future__ import annotations

import pytest

from itsproxy.proxy.config import Config, ConfigError, parse_config
from itsproxy.proxy.routing import Router

BASE = "http://127.0.0.1:1/v1"


def dep(name: str, **params) -> dict:
    return {"model_name": name, "litellm_params": {"model": "openai/x", "api_base": BASE, **params}}


def test_repeated_model_name_is_deployments_of_one_model():
    c = parse_config({"model_list": [
        dep("gpt", rpm=10, weight=2, api_key="sk-a"),
        {**dep("gpt", tpm=5000, api_base="http://127.0.0.1:2/v1"), "model_info": {"id": "east", "supports_n": False}},
        dep("other"),
    ]})
    assert list(c.models) == ["gpt", "other"]
    gpt = c.models["gpt"]
    assert [d.id for d in gpt.deployments] == ["gpt#0", "east"]
    first, second = gpt.deployments
    assert (first.rpm, first.tpm, first.weight) == (10, None, 2.0)
    assert (second.rpm, second.tpm, second.api_base) == (None, 5000, "http://127.0.0.1:2/v1")
    assert "rpm" not in first.params and "weight" not in first.params  # ours, not the provider's
    assert gpt.model == "openai/x" and gpt.api_base == BASE and gpt.supports_n is False  # the single-call view
    assert "sk-a" in c.secrets


def test_duplicate_deployment_id_is_refused():
    with pytest.raises(ConfigError, match=r"^model_list\[1\]\.model_info\.id: duplicate"):
        parse_config({"model_list": [{**dep("a"), "model_info": {"id": "x"}}, {**dep("b"), "model_info": {"id": "x"}}]})


@pytest.mark.parametrize("name, model, asked, served", [
    ("openai/*", "openai/*", "openai/gpt-4o", "openai/gpt-4o"),
    ("*", "*", "gpt-4o-mini", "gpt-4o-mini"),
    ("*", "openai/*", "gpt-4o-mini", "openai/gpt-4o-mini"),
    ("team-*", "hosted_vllm/*", "team-llama", "hosted_vllm/llama"),
    ("fixed-*", "openai/gpt-4o", "fixed-anything", "openai/gpt-4o"),
])
def test_wildcard_model_names(name, model, asked, served):
    c = parse_config({"model_list": [dep("exact"), dep(name, model=model)]})
    entry = c.model(asked)
    assert entry is not None and entry.name == asked and entry.model == served
    assert c.model("exact").model == "openai/x"
    route = Router(c).resolve(asked)
    assert route.passthrough and route.target == asked and route.name == name


def test_wildcard_does_not_match_empty_or_other_prefixes():
    c = parse_config({"model_list": [dep("openai/*", model="openai/*")]})
    assert c.model("openai/") is None and c.model("anthropic/claude") is None


def test_route_globs_come_before_model_list_wildcards():
    routes = [{"name": "r", "match": {"model": "openai/special-*"}, "generate": {"model": "exact"}, "passthrough": True}]
    c = parse_config({"model_list": [dep("exact"), dep("openai/*", model="openai/*")], "routes": routes})
    router = Router(c)
    assert router.resolve("openai/special-1").name == "r"
    assert router.resolve("openai/gpt-4o").name == "openai/*"


def test_route_alias_equal_to_a_model_name_wins():
    routes = [{"name": "scaled", "match": {"model": "m"}, "generate": {"model": "m", "n": 3},
               "select": [{"vote": {"extract": "number"}}]}]
    c = parse_config({"model_list": [dep("m")], "routes": routes})
    assert Router(c).resolve("m").name == "scaled"


def litellm(**sections) -> Config:
    return parse_config({"model_list": [dep("m")], **sections})


def test_master_key_is_an_api_key(monkeypatch):
    monkeypatch.setenv("ITS_TEST_MASTER", "sk-master-1")
    c = litellm(general_settings={"master_key": "os.environ/ITS_TEST_MASTER"})
    assert c.server.api_keys == ["sk-master-1"] and "sk-master-1" in c.secrets
    c = litellm(general_settings={"master_key": "sk-m"}, server={"api_keys": ["sk-a", "sk-m"]})
    assert c.server.api_keys == ["sk-a", "sk-m"]


def test_litellm_settings_map_to_server_settings():
    c = litellm(litellm_settings={"drop_params": True, "num_retries": 2, "request_timeout": 45},
                general_settings={"max_request_size_mb": 1.5})
    s = c.server
    assert (s.drop_params, s.num_retries, s.upstream_timeout_s, s.max_body_bytes) == (True, 2, 45.0, 1572864)
    # said twice, the same way: fine
    assert litellm(server={"num_retries": 2}, litellm_settings={"num_retries": 2}).server.num_retries == 2


def test_router_settings():
    c = litellm(router_settings={"allowed_fails": 1, "cooldown_time": 30, "routing_strategy": "simple-shuffle",
                                 "num_retries": 4, "timeout": 20})
    assert (c.router.allowed_fails, c.router.cooldown_time_s) == (1, 30.0)
    assert (c.server.num_retries, c.server.upstream_timeout_s) == (4, 20.0)
    assert litellm().router.allowed_fails == 3 and litellm().router.cooldown_time_s == 5.0  # LiteLLM's defaults


@pytest.mark.parametrize("section, key, hint", [
    ("general_settings", "database_url", "budgets"),
    ("general_settings", "custom_auth", "server.api_keys"),
    ("general_settings", "something_new", "Moving from LiteLLM"),
    ("litellm_settings", "cache", "cache: {ttl_s"),
    ("litellm_settings", "max_budget", "budgets"),
    ("litellm_settings", "set_verbose", "--log-level"),
    ("router_settings", "model_group_alias", "route"),
    ("router_settings", "enable_pre_call_checks", "known: allowed_fails"),
])
def test_other_litellm_keys_name_the_alternative(section, key, hint):
    with pytest.raises(ConfigError) as exc:
        litellm(**{section: {key: True}})
    assert str(exc.value).startswith(f"{section}.{key}: not supported") and hint in str(exc.value)
