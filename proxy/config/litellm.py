"""A LiteLLM proxy config, moved over: `general_settings`, `litellm_settings` and the
server-level keys of `router_settings`, translated into `server:` settings.

Honoured (same meaning as in LiteLLM):
    general_settings.master_key          -> one more entry of server.api_keys (auth is ON)
    general_settings.max_request_size_mb -> server.max_body_bytes
    litellm_settings.drop_params         -> server.drop_params
    litellm_settings.num_retries         -> server.num_retries   (also router_settings.num_retries)
    litellm_settings.request_timeout     -> server.upstream_timeout_s   (also router_settings.timeout)
Every other key is a config error that names what itsproxy does instead: a LiteLLM
setting that silently did nothing here (auth, a budget, a callback) would be a trap.
A value given twice (say `server.num_retries` and `litellm_settings.num_retries`)
must agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from itsproxy.proxy.config.server import ROUTER_TO_SERVER
from itsproxy.proxy.config_fields import ConfigError, boolean, integer, mapping, number, string

GENERAL_ELSEWHERE = {
    "database_url": "itsproxy keeps no database of keys or spend: API keys are server.api_keys, "
                    "daily limits are `budgets:` (SQLite at budgets.path)",
    "store_model_in_db": "models are model_list in config.yaml only",
    "max_parallel_requests": "server.max_upstream_concurrency caps concurrent upstream calls",
    "global_max_parallel_requests": "server.max_upstream_concurrency caps concurrent upstream calls",
    "alerting": "scrape /metrics with Prometheus and alert there (deploy/ has a Prometheus setup)",
    "custom_auth": "server.api_keys",
    "public_routes": "server.protect_metrics decides whether /metrics needs a key; /health is always open",
    "background_health_checks": "GET /health; upstream failures show in /metrics",
    "health_check_interval": "GET /health; upstream failures show in /metrics",
    "otel": "`traces:` (JSON lines) and /metrics",
    "disable_spend_logs": "`traces:` is off unless it has a path",
}
LITELLM_ELSEWHERE = {
    "set_verbose": "`itsproxy serve --log-level debug`",
    "json_logs": "`itsproxy serve --log-level`; decision traces are JSON lines (`traces:`)",
    "success_callback": "`traces:` (one JSON line per request) and /metrics",
    "failure_callback": "`traces:` (one JSON line per request) and /metrics",
    "callbacks": "`traces:` (one JSON line per request) and /metrics",
    "service_callback": "/metrics",
    "cache": "a route's `cache: {ttl_s: N}` (verified answers only; in Redis with server.state)",
    "cache_params": "a route's `cache: {ttl_s: N}` (verified answers only; in Redis with server.state)",
    "max_budget": "`budgets:` (per API key, per UTC day)",
    "budget_duration": "`budgets:` (per API key, per UTC day)",
    "fallbacks": "deployments of one model_name fail over to each other; another model is a route",
    "default_fallbacks": "deployments of one model_name fail over to each other",
    "context_window_fallbacks": "not supported; send long prompts to a bigger model with a route",
    "default_team_settings": "server.api_keys and `budgets.keys`",
    "telemetry": "itsproxy sends no telemetry; remove the key",
}


@dataclass(frozen=True)
class Override:
    key: str  # a `server:` key
    value: Any  # already validated
    source: str  # the key path it came from


def _general(raw: Any) -> list[Override]:
    path = "general_settings"
    out: list[Override] = []
    for key, value in mapping(raw, path).items():
        p = f"{path}.{key}"
        if key == "master_key":
            out.append(Override("api_keys", [string(value, p)], p))
        elif key == "max_request_size_mb":
            mb = number(value, p, exclusive_min=True) or 0.0
            out.append(Override("max_body_bytes", int(mb * 1024 * 1024), p))
        else:
            hint = GENERAL_ELSEWHERE.get(key, "remove it (see README, 'Moving from LiteLLM')")
            raise ConfigError(p, f"not supported by itsproxy; instead: {hint}")
    return out


def _litellm(raw: Any) -> list[Override]:
    path = "litellm_settings"
    out: list[Override] = []
    for key, value in mapping(raw, path).items():
        p = f"{path}.{key}"
        if key == "drop_params":
            out.append(Override("drop_params", boolean(value, p), p))
        elif key == "num_retries":
            out.append(Override("num_retries", integer(value, p, default=0), p))
        elif key == "request_timeout":
            out.append(Override("upstream_timeout_s", number(value, p, exclusive_min=True), p))
        else:
            hint = LITELLM_ELSEWHERE.get(key, "remove it (see README, 'Moving from LiteLLM')")
            raise ConfigError(p, f"not supported by itsproxy; instead: {hint}")
    return out


def _router(raw: Any) -> list[Override]:
    out: list[Override] = []
    for key, target in ROUTER_TO_SERVER.items():
        value = mapping(raw, "router_settings").get(key)
        if value is None:
            continue
        p = f"router_settings.{key}"
        out.append(Override(target, integer(value, p, default=0) if target == "num_retries"
                            else number(value, p, exclusive_min=True), p))
    return out


def merge_server(server: Any, general: Any, litellm: Any, router: Any) -> dict[str, Any]:
    """The `server:` mapping with the LiteLLM sections' settings folded in (checked, never overwritten)."""
    merged = dict(mapping(server, "server"))
    given = {k: f"server.{k}" for k in merged}
    for o in [*_general(general), *_litellm(litellm), *_router(router)]:
        if o.key == "api_keys":
            keys = merged.get("api_keys") or []
            if isinstance(keys, list):  # anything else: parse_server names the error
                merged["api_keys"] = keys + [k for k in o.value if k not in keys]
            continue
        if o.key in merged and merged[o.key] != o.value:
            raise ConfigError(o.source, f"disagrees with {given[o.key]} (itsproxy's name for the same setting); "
                              "keep one")
        merged[o.key] = o.value
        given.setdefault(o.key, o.source)
    return merged
