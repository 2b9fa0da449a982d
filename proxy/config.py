"""Loading and validating config.yaml: `model_list` (LiteLLM's convention), `routes`, `server`.

Validation happens once, at load; every message names the key path at fault.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from itsproxy.proxy.config_fields import ConfigError, boolean, choice, integer, mapping, number, seq, string
from itsproxy.proxy.http.chat_request import FORWARD
from itsproxy.proxy.telemetry.traces import parse_traces
from itsproxy.strategies.pipeline import Pipeline, build_pipeline
from itsproxy.strategies.types import SpecError

ENV_PREFIX = "os.environ/"
DEFAULT_CONFIG = "default_config.yaml"


@dataclass
class ModelEntry:
    name: str  # model_name, what routes and clients refer to
    model: str  # litellm model string, e.g. openai/gpt-4o-mini
    params: dict[str, Any]  # litellm_params with os.environ/ references resolved
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    supports_n: bool | None = None  # None: learn it from the upstream

    @property
    def api_base(self) -> str | None:
        return self.params.get("api_base") or self.params.get("base_url")

    @property
    def provider(self) -> str:
        if self.params.get("custom_llm_provider"):
            return self.params["custom_llm_provider"]
        return self.model.split("/", 1)[0] if "/" in self.model else "openai"

    @property
    def secrets(self) -> list[str]:
        return [str(v) for k, v in self.params.items() if "key" in k or "token" in k or "secret" in k]


@dataclass
class Limits:
    max_n: int
    timeout_s: float
    max_extra_tokens: int | None = None
    max_cost_usd: float | None = None


@dataclass
class Route:
    name: str
    match: str  # model alias, exact or glob
    passthrough: bool
    pipeline: Pipeline | None  # None on passthrough routes
    target: str  # generate.model: where passthrough goes; the pool's first model otherwise
    limits: Limits
    usage_report: str = "total"
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def is_glob(self) -> bool:
        return any(ch in self.match for ch in "*?[")

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.match) if self.is_glob else model == self.match


@dataclass
class ServerConfig:
    api_keys: list[str] = field(default_factory=list)
    protect_metrics: bool = False
    allow_unauthenticated: bool = False
    max_upstream_concurrency: int = 256
    upstream_queue_timeout_s: float = 30.0
    max_body_bytes: int = 4 * 1024 * 1024
    upstream_timeout_s: float = 600.0
    num_retries: int = 0
    keepalive_s: float = 5.0
    upstream_client: str = "auto"  # auto: lean HTTP path for OpenAI-compatible bases; litellm: always litellm
    state_dir: str = ".itsproxy"


@dataclass
class Config:
    models: dict[str, ModelEntry]
    routes: list[Route]
    server: ServerConfig
    simulator: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # sections later features read (traces, budgets)
    source: str = "<memory>"

    @property
    def secrets(self) -> list[str]:
        out = [s for m in self.models.values() for s in m.secrets]
        return [s for s in out + self.server.api_keys if s]


TOP_KEYS = {"model_list", "routes", "server", "simulator", "traces", "budgets", "general_settings", "litellm_settings"}
SERVER_KEYS = {f for f in ServerConfig.__dataclass_fields__}
ROUTE_KEYS = {
    "name", "match", "generate", "select", "passthrough", "limits", "repair", "on_unverified",
    "min_candidates", "usage_report",
}


def resolve_env(value: Any, path: str) -> Any:
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX):]
        if name not in os.environ:
            raise ConfigError(path, f"environment variable {name} is not set")
        return os.environ[name]
    if isinstance(value, dict):
        return {k: resolve_env(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _model_entry(raw: Any, path: str) -> ModelEntry:
    raw = mapping(raw, path, {"model_name", "litellm_params", "model_info"})
    name = string(raw.get("model_name"), f"{path}.model_name")
    params = resolve_env(mapping(raw.get("litellm_params"), f"{path}.litellm_params"), f"{path}.litellm_params")
    model = string(params.get("model"), f"{path}.litellm_params.model")
    info = mapping(raw.get("model_info"), f"{path}.model_info")
    cost_in = params.pop("input_cost_per_token", info.get("input_cost_per_token"))
    cost_out = params.pop("output_cost_per_token", info.get("output_cost_per_token"))
    supports_n = params.pop("supports_n", info.get("supports_n"))
    return ModelEntry(
        name=name,
        model=model,
        params=params,
        input_cost_per_token=number(cost_in, f"{path}.litellm_params.input_cost_per_token"),
        output_cost_per_token=number(cost_out, f"{path}.litellm_params.output_cost_per_token"),
        supports_n=None if supports_n is None else boolean(supports_n, f"{path}.model_info.supports_n"),
    )


def _server(raw: Any) -> ServerConfig:
    raw = mapping(raw, "server", SERVER_KEYS)
    keys = [string(k, f"server.api_keys[{i}]") for i, k in enumerate(seq(raw.get("api_keys"), "server.api_keys"))]
    keys = resolve_env(keys, "server.api_keys")
    d = ServerConfig()
    return ServerConfig(
        api_keys=keys,
        protect_metrics=boolean(raw.get("protect_metrics"), "server.protect_metrics"),
        allow_unauthenticated=boolean(raw.get("allow_unauthenticated"), "server.allow_unauthenticated"),
        max_upstream_concurrency=integer(
            raw.get("max_upstream_concurrency"), "server.max_upstream_concurrency",
            default=d.max_upstream_concurrency, minimum=1),
        upstream_queue_timeout_s=number(
            raw.get("upstream_queue_timeout_s"), "server.upstream_queue_timeout_s",
            default=d.upstream_queue_timeout_s, exclusive_min=True),
        max_body_bytes=integer(raw.get("max_body_bytes"), "server.max_body_bytes", default=d.max_body_bytes, minimum=1),
        upstream_timeout_s=number(
            raw.get("upstream_timeout_s"), "server.upstream_timeout_s", default=d.upstream_timeout_s,
            exclusive_min=True),
        num_retries=integer(raw.get("num_retries"), "server.num_retries", default=0),
        keepalive_s=number(raw.get("keepalive_s"), "server.keepalive_s", default=d.keepalive_s, exclusive_min=True),
        upstream_client=choice(raw.get("upstream_client"), "server.upstream_client", ("auto", "litellm"),
                               default="auto"),
        state_dir=string(raw.get("state_dir"), "server.state_dir", required=False) or d.state_dir,
    )


def _route(raw: Any, path: str, models: dict[str, ModelEntry]) -> Route:
    raw = mapping(raw, path, ROUTE_KEYS)
    name = string(raw.get("name"), f"{path}.name")
    match = mapping(raw.get("match"), f"{path}.match", {"model"})
    alias = string(match.get("model"), f"{path}.match.model")
    passthrough = boolean(raw.get("passthrough"), f"{path}.passthrough")
    generate = mapping(raw.get("generate"), f"{path}.generate")
    if not generate:
        raise ConfigError(f"{path}.generate", "is required (at least `model`)")
    try:
        pipeline = build_pipeline(raw, path, set(models))
    except SpecError as exc:
        raise ConfigError(exc.path, exc.message) from None
    for key in pipeline.generate.params:  # the same allow-list clients get, less what has its own key
        if key not in FORWARD or key in ("seed", "temperature", "max_tokens"):
            raise ConfigError(f"{path}.generate.params.{key}", "not a parameter a route can set here "
                              "(temperature and max_tokens have their own keys under generate)")
    for stage in pipeline.stages:  # judges, reward models and USC name models too
        for model in stage.models:
            if model not in models:
                raise ConfigError(stage.model_path or f"{path}.select",
                                  f"unknown model {model!r}; model_list has {', '.join(sorted(models))}")
    if passthrough and (raw.get("select") or raw.get("repair")):
        raise ConfigError(f"{path}.passthrough", "a passthrough route cannot also have select or repair")
    limits = mapping(raw.get("limits"), f"{path}.limits", {"max_n", "timeout_s", "max_extra_tokens", "max_cost_usd"})
    n = pipeline.generate.n
    capped = limits.get("max_extra_tokens") is not None or limits.get("max_cost_usd") is not None
    if capped and not (pipeline.generate.adaptive or pipeline.repair):
        raise ConfigError(f"{path}.limits", "max_extra_tokens / max_cost_usd stop drawing between batches: "
                          "they need generate.adaptive or repair (one batch cannot stop part-way)")
    max_n = integer(limits.get("max_n"), f"{path}.limits.max_n", default=n, minimum=1)
    return Route(
        name=name,
        match=alias,
        passthrough=passthrough,
        pipeline=None if passthrough else pipeline,
        target=pipeline.generate.pool[0].model,
        limits=Limits(
            max_n=max_n,
            timeout_s=number(limits.get("timeout_s"), f"{path}.limits.timeout_s", default=600.0, exclusive_min=True),
            max_extra_tokens=integer(limits.get("max_extra_tokens"), f"{path}.limits.max_extra_tokens"),
            max_cost_usd=number(limits.get("max_cost_usd"), f"{path}.limits.max_cost_usd"),
        ),
        usage_report=choice(raw.get("usage_report"), f"{path}.usage_report", ("total", "selected"), default="total"),
        raw=raw,
    )


def parse_config(data: Any, source: str = "<memory>") -> Config:
    data = mapping(data, "", TOP_KEYS)
    models: dict[str, ModelEntry] = {}
    for i, raw in enumerate(seq(data.get("model_list"), "model_list")):
        entry = _model_entry(raw, f"model_list[{i}]")
        if entry.name in models:
            raise ConfigError(f"model_list[{i}].model_name", f"duplicate model_name {entry.name!r}")
        models[entry.name] = entry
    if not models:
        raise ConfigError("model_list", "must list at least one model")
    routes: list[Route] = []
    for i, raw in enumerate(seq(data.get("routes"), "routes")):
        route = _route(raw, f"routes[{i}]", models)
        if any(r.name == route.name for r in routes):
            raise ConfigError(f"routes[{i}].name", f"duplicate route name {route.name!r}")
        routes.append(route)
    parse_traces(data.get("traces"))  # validated at load, used by the trace hook
    sim = data.get("simulator")
    return Config(
        models=models,
        routes=routes,
        server=_server(data.get("server")),
        simulator=None if sim is None else mapping(sim, "simulator"),
        extra={k: data[k] for k in ("traces", "budgets") if k in data},
        source=source,
    )


def load_config(path: str | None = None) -> Config:
    """Load `path`, or the default config shipped in the package (offline demo)."""
    if path is None:
        text = resources.files("itsproxy.proxy").joinpath(DEFAULT_CONFIG).read_text()
        source = f"<package>/{DEFAULT_CONFIG}"
    else:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
        source = path
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{source} is not valid YAML: {exc}") from None
    return parse_config(data, source)
