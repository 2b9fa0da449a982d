"""`routes:`: which client model names get which strategy (strategies/ builds the pipeline).

A route's pipeline is built here, at load, so every spec error is a config error.
Building it does no I/O: checker and reward HTTP clients open on first use (and
`Services.aclose` closes them); a `python` checker's module is imported here, on
purpose, so a wrong module path is caught by `check-config`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from itsproxy.proxy.config_fields import ConfigError, boolean, choice, integer, mapping, number, seq, string
from itsproxy.proxy.params import FORWARD
from itsproxy.strategies.pipeline import Pipeline, build_pipeline
from itsproxy.strategies.stages.check import CheckStage
from itsproxy.strategies.types import SpecError

ROUTE_KEYS = {
    "name", "match", "generate", "select", "passthrough", "limits", "repair", "on_unverified",
    "min_candidates", "usage_report", "client_params", "on_no_answer", "cache",
}
LIMIT_KEYS = {"max_n", "timeout_s", "max_extra_tokens", "max_cost_usd"}


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
    client_params: str = "override"  # the route's temperature wins (said in its.overrides), or `respect` the client's
    cache_ttl_s: float | None = None  # `cache: {ttl_s}`: verified answers served again (storage/response_cache.py)

    @property
    def is_glob(self) -> bool:
        return any(ch in self.match for ch in "*?[")

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.match) if self.is_glob else model == self.match


def _pipeline(raw: dict[str, Any], path: str, models: set[str]) -> Pipeline:
    try:
        pipeline = build_pipeline(raw, path, models)
    except SpecError as exc:
        raise ConfigError(exc.path, exc.message) from None
    for key in pipeline.generate.params:  # the same allow-list clients get, less what has its own key
        if key not in FORWARD or key in ("seed", "temperature", "max_tokens"):
            raise ConfigError(f"{path}.generate.params.{key}", "not a parameter a route can set here "
                              "(temperature and max_tokens have their own keys under generate)")
    for stage in pipeline.stages:  # judges, reward models and USC name models too
        for model in getattr(stage, "models", []):
            if model not in models:
                raise ConfigError(getattr(stage, "model_path", f"{path}.select"),
                                  f"unknown model {model!r}; model_list has {', '.join(sorted(models))}")
    return pipeline


def _limits(raw: dict[str, Any], path: str, pipeline: Pipeline) -> Limits:
    limits = mapping(raw.get("limits"), f"{path}.limits", LIMIT_KEYS)
    capped = limits.get("max_extra_tokens") is not None or limits.get("max_cost_usd") is not None
    if capped and not (pipeline.generate.adaptive or pipeline.repair or pipeline.generate.steps):
        raise ConfigError(f"{path}.limits", "max_extra_tokens / max_cost_usd stop drawing between batches: "
                          "they need generate.adaptive, generate.steps or repair (one batch cannot stop part-way)")
    n = pipeline.generate.n
    return Limits(
        max_n=integer(limits.get("max_n"), f"{path}.limits.max_n", default=n, minimum=1) or n,
        timeout_s=number(limits.get("timeout_s"), f"{path}.limits.timeout_s", default=600.0,
                         exclusive_min=True) or 600.0,
        max_extra_tokens=integer(limits.get("max_extra_tokens"), f"{path}.limits.max_extra_tokens"),
        max_cost_usd=number(limits.get("max_cost_usd"), f"{path}.limits.max_cost_usd"),
    )


def _cache(raw: dict[str, Any], path: str, pipeline: Pipeline | None) -> float | None:
    """`cache: {ttl_s: N}`: only on a route whose check stage can verify what it would store."""
    if raw.get("cache") is None:
        return None
    spec = mapping(raw["cache"], f"{path}.cache", {"ttl_s"})
    ttl = number(spec.get("ttl_s"), f"{path}.cache.ttl_s", exclusive_min=True)
    if ttl is None:
        raise ConfigError(f"{path}.cache.ttl_s", "is required (seconds a cached answer is served)")
    if pipeline is None or not any(isinstance(s, CheckStage) for s in pipeline.stages):
        raise ConfigError(f"{path}.cache", "only a verified answer may be cached, and this route has no "
                          "`check` stage to verify one (add select: [{check: ...}] or remove cache)")
    return ttl


def parse_route(raw: Any, path: str, models: set[str]) -> Route:
    raw = mapping(raw, path, ROUTE_KEYS)
    name = str(string(raw.get("name"), f"{path}.name"))
    alias = str(string(mapping(raw.get("match"), f"{path}.match", {"model"}).get("model"), f"{path}.match.model"))
    passthrough = boolean(raw.get("passthrough"), f"{path}.passthrough")
    if not mapping(raw.get("generate"), f"{path}.generate"):
        raise ConfigError(f"{path}.generate", "is required (at least `model`)")
    pipeline = _pipeline(raw, path, models)
    if passthrough and (raw.get("select") or raw.get("repair")):
        raise ConfigError(f"{path}.passthrough", "a passthrough route cannot also have select or repair")
    return Route(
        name=name,
        match=alias,
        passthrough=passthrough,
        pipeline=None if passthrough else pipeline,
        target=pipeline.generate.pool[0].model,
        limits=_limits(raw, path, pipeline),
        usage_report=choice(raw.get("usage_report"), f"{path}.usage_report", ("total", "selected"), default="total"),
        client_params=choice(raw.get("client_params"), f"{path}.client_params", ("override", "respect"),
                             default="override"),
        cache_ttl_s=_cache(raw, path, None if passthrough else pipeline),
    )


def check_continuation(routes: list[Route], modes: dict[str, str]) -> None:
    """A search over steps continues a partial answer: a completion-mode model does that with a raw
    prompt, a chat model only when the route says it takes `continue_final_message` (vLLM)."""
    for i, route in enumerate(routes):
        steps = route.pipeline.generate.steps if route.pipeline else None
        if steps is None:
            continue
        mode = modes.get(route.target, "chat")
        want = "completion" if steps.continuation == "completion" else "chat"
        if mode != want:
            hint = ("give the model `model_info: {mode: completion}` (a raw-prompt /v1/completions upstream), or "
                    "set `continuation: chat` if the upstream continues a final assistant message "
                    "(vLLM's continue_final_message)") if want == "completion" else \
                "`continuation: chat` needs a chat model; a completion-mode model continues with the default"
            raise ConfigError(f"routes[{i}].generate.steps", f"cannot continue partial answers on "
                              f"{route.target!r} (mode {mode}): {hint}")


def parse_routes(raw: Any, models: set[str]) -> list[Route]:
    """Every route; two with the same name or the same `match.model` are refused (the
    second could never be reached)."""
    routes: list[Route] = []
    for i, item in enumerate(seq(raw, "routes")):
        route = parse_route(item, f"routes[{i}]", models)
        for j, other in enumerate(routes):
            if other.name == route.name:
                raise ConfigError(f"routes[{i}].name", f"duplicate route name {route.name!r} (routes[{j}])")
            if other.match == route.match:
                raise ConfigError(f"routes[{i}].match.model", f"{route.match!r} is already matched by "
                                  f"routes[{j}] ({other.name!r}); this route could never be reached")
        routes.append(route)
    return routes
