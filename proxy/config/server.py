"""The `server:` section (how the proxy itself runs) and `router_settings:` (how it
spreads calls over a model's deployments, with LiteLLM's names and defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from itsproxy.proxy.config_fields import ConfigError, boolean, choice, integer, mapping, number, seq, string


@dataclass(frozen=True)
class StateConfig:
    """`server.state`: where state shared by replicas lives. sqlite (default): files under
    `state_dir`, one machine. redis: budgets and search statistics in one Redis, any number
    of replicas (storage/redis_state.py)."""

    backend: str = "sqlite"
    url: str | None = None  # redis://[:password@]host:port/db
    key_prefix: str = "itsproxy:"


def parse_state(raw: Any) -> StateConfig:
    path = "server.state"
    raw = mapping(raw, path, {"backend", "url", "key_prefix"})
    backend = choice(raw.get("backend"), f"{path}.backend", ("sqlite", "redis"), default="sqlite")
    url = string(raw.get("url"), f"{path}.url", required=False)
    if backend == "redis" and not url:
        raise ConfigError(f"{path}.url", "backend redis needs a url (redis://host:6379/0)")
    if backend == "sqlite" and url:
        raise ConfigError(f"{path}.url", "only for backend: redis (sqlite files live under server.state_dir)")
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{path}.url", "must start with redis://, rediss:// or unix://")
    prefix = string(raw.get("key_prefix"), f"{path}.key_prefix", required=False)
    return StateConfig(backend, url, StateConfig.key_prefix if prefix is None else prefix)


@dataclass
class ServerConfig:
    api_keys: list[str] = field(default_factory=list)
    protect_metrics: bool = False
    allow_unauthenticated: bool = False
    max_upstream_concurrency: int = 256
    upstream_queue_timeout_s: float = 30.0
    max_body_bytes: int = 4 * 1024 * 1024
    max_upstream_body_bytes: int = 32 * 1024 * 1024  # an upstream reply (or one stream line) past this: 502
    upstream_timeout_s: float = 600.0
    num_retries: int = 0
    drop_params: bool = False  # drop parameters an upstream does not take instead of passing them on
    keepalive_s: float = 5.0
    upstream_client: str = "auto"  # auto: lean HTTP path for OpenAI-compatible bases; litellm: always litellm
    state_dir: str = ".itsproxy"
    state: StateConfig = field(default_factory=StateConfig)
    access_log: bool = True  # one JSON line per settled request on the `itsproxy.access` logger
    body_timeout_s: float = 10.0  # a client that has not sent its whole body by then: 408


SERVER_KEYS = set(ServerConfig.__dataclass_fields__)


def parse_server(raw: Any) -> ServerConfig:
    raw = mapping(raw, "server", SERVER_KEYS)
    keys = [str(string(k, f"server.api_keys[{i}]")) for i, k in enumerate(seq(raw.get("api_keys"), "server.api_keys"))]
    d = ServerConfig()
    return ServerConfig(
        api_keys=keys,
        protect_metrics=boolean(raw.get("protect_metrics"), "server.protect_metrics"),
        allow_unauthenticated=boolean(raw.get("allow_unauthenticated"), "server.allow_unauthenticated"),
        max_upstream_concurrency=integer(
            raw.get("max_upstream_concurrency"), "server.max_upstream_concurrency",
            default=d.max_upstream_concurrency, minimum=1) or d.max_upstream_concurrency,
        upstream_queue_timeout_s=number(
            raw.get("upstream_queue_timeout_s"), "server.upstream_queue_timeout_s",
            default=d.upstream_queue_timeout_s, exclusive_min=True) or d.upstream_queue_timeout_s,
        max_body_bytes=integer(raw.get("max_body_bytes"), "server.max_body_bytes",
                               default=d.max_body_bytes, minimum=1) or d.max_body_bytes,
        max_upstream_body_bytes=integer(raw.get("max_upstream_body_bytes"), "server.max_upstream_body_bytes",
                                        default=d.max_upstream_body_bytes, minimum=1024) or d.max_upstream_body_bytes,
        upstream_timeout_s=number(raw.get("upstream_timeout_s"), "server.upstream_timeout_s",
                                  default=d.upstream_timeout_s, exclusive_min=True) or d.upstream_timeout_s,
        num_retries=integer(raw.get("num_retries"), "server.num_retries", default=0) or 0,
        drop_params=boolean(raw.get("drop_params"), "server.drop_params"),
        keepalive_s=number(raw.get("keepalive_s"), "server.keepalive_s",
                           default=d.keepalive_s, exclusive_min=True) or d.keepalive_s,
        upstream_client=choice(raw.get("upstream_client"), "server.upstream_client", ("auto", "litellm"),
                               default="auto"),
        state_dir=string(raw.get("state_dir"), "server.state_dir", required=False) or d.state_dir,
        state=parse_state(raw.get("state")),
        access_log=boolean(raw.get("access_log"), "server.access_log", default=True),
        body_timeout_s=number(raw.get("body_timeout_s"), "server.body_timeout_s",
                              default=d.body_timeout_s, exclusive_min=True) or d.body_timeout_s,
    )


@dataclass(frozen=True)
class RouterSettings:
    """Deployment selection and cooldown (LiteLLM's `router_settings`, same defaults)."""

    routing_strategy: str = "simple-shuffle"  # random, weighted by weight / rpm / tpm when given
    allowed_fails: int = 3  # failures within a minute a deployment may have before it cools down
    cooldown_time_s: float = 5.0  # how long a cooled-down deployment gets no calls


ROUTER_STRATEGIES = ("simple-shuffle",)
# router_settings keys that belong to `server:` in itsproxy (same meaning), moved there by the loader.
ROUTER_TO_SERVER = {"num_retries": "num_retries", "timeout": "upstream_timeout_s"}
REDIS_ELSEWHERE = ("budgets and search statistics are shared through `server.state: {backend: redis, url: "
                   "redis://...}`; rpm/tpm limits and cooldowns are kept per process")
ROUTER_ELSEWHERE = {
    "redis_host": REDIS_ELSEWHERE,
    "redis_port": REDIS_ELSEWHERE,
    "redis_password": REDIS_ELSEWHERE,
    "model_group_alias": "a route: `routes: [{match: {model: ALIAS}, generate: {model: NAME}, passthrough: true}]`",
    "fallbacks": "deployments of one model_name fail over to each other; "
                 "another model is a route's `generate.models` pool",
    "default_fallbacks": "deployments of one model_name fail over to each other",
    "context_window_fallbacks": "not supported; route long prompts to a bigger model with a route",
    "retry_after": "itsproxy honours the upstream's Retry-After instead",
}


def parse_router(raw: Any) -> RouterSettings:
    path = "router_settings"
    raw = mapping(raw, path)
    for key in raw:
        if key in ROUTER_ELSEWHERE:
            raise ConfigError(f"{path}.{key}", f"not supported by itsproxy: {ROUTER_ELSEWHERE[key]}")
        if key not in {"routing_strategy", "allowed_fails", "cooldown_time", *ROUTER_TO_SERVER}:
            raise ConfigError(f"{path}.{key}", "not supported by itsproxy (known: allowed_fails, cooldown_time, "
                              "routing_strategy, num_retries -> server.num_retries, "
                              "timeout -> server.upstream_timeout_s)")
    d = RouterSettings()
    strategy = raw.get("routing_strategy")
    if strategy is not None and strategy not in ROUTER_STRATEGIES:
        raise ConfigError(f"{path}.routing_strategy", f"itsproxy does only simple-shuffle (weighted by "
                          f"weight, rpm or tpm when given), got {strategy!r}")
    return RouterSettings(
        allowed_fails=integer(raw.get("allowed_fails"), f"{path}.allowed_fails", default=d.allowed_fails)
        or 0,
        cooldown_time_s=number(raw.get("cooldown_time"), f"{path}.cooldown_time", default=d.cooldown_time_s,
                               exclusive_min=True) or d.cooldown_time_s,
    )
