"""`model_list` (LiteLLM's convention): models, their deployments, wildcard names.

Entries that repeat a `model_name` are several DEPLOYMENTS of one model, as in
LiteLLM's load balancing: one `ModelEntry` with a list of `Deployment`s (the
choice among them lives in upstream/deployments.py). A `model_name` with `*`
(`openai/*`, `*`) is a wildcard: a request for a name it matches is served by
a concrete copy whose `litellm_params.model` has each `*` replaced by what the
name's `*` matched (`openai/*` -> `openai/*`: `openai/gpt-4o` -> `openai/gpt-4o`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from itsproxy.proxy.config_fields import ConfigError, boolean, choice, integer, mapping, number, string
from itsproxy.proxy.redact import model_secrets

ENTRY_KEYS = {"model_name", "litellm_params", "model_info"}
MODES = ("chat", "completion", "embedding")  # LiteLLM's model_info.mode values that itsproxy serves
# litellm_params keys that describe the deployment to the balancer/pricing rather than to the provider.
OWN_PARAMS = ("rpm", "tpm", "weight", "input_cost_per_token", "output_cost_per_token", "supports_n")



@dataclass(frozen=True)
class Deployment:
    """One place a model is served: a provider model string and how to reach it."""

    id: str  # model_info.id, else "<model_name>#<position among its deployments>"
    model: str  # litellm model string, e.g. openai/gpt-4o-mini
    params: dict[str, Any]  # litellm_params, os.environ/ references resolved, OWN_PARAMS removed
    rpm: int | None = None  # requests per minute this deployment accepts (enforced per process)
    tpm: int | None = None  # tokens per minute
    weight: float | None = None  # relative share of traffic (LiteLLM's `weight`)
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    mode: str = "chat"  # model_info.mode (LiteLLM's): chat | completion (a base model: /v1/completions) | embedding
    supports_n: bool | None = None  # None: learn it from the upstream

    @property
    def api_base(self) -> str | None:
        return self.params.get("api_base") or self.params.get("base_url")

    @property
    def provider(self) -> str:
        if self.params.get("custom_llm_provider"):
            return str(self.params["custom_llm_provider"])
        return self.model.split("/", 1)[0] if "/" in self.model else "openai"

    @property
    def secrets(self) -> list[str]:
        return model_secrets(self.params)


@dataclass
class ModelEntry:
    """A `model_name` and its deployments. The single-deployment view (`model`,
    `params`, `api_base`, ...) is the first deployment: what callers that do not
    balance use."""

    name: str
    deployments: list[Deployment] = field(default_factory=list)

    @property
    def first(self) -> Deployment:
        return self.deployments[0]

    @property
    def model(self) -> str:
        return self.first.model

    @property
    def params(self) -> dict[str, Any]:
        return self.first.params

    @property
    def api_base(self) -> str | None:
        return self.first.api_base

    @property
    def provider(self) -> str:
        return self.first.provider

    @property
    def input_cost_per_token(self) -> float | None:
        return self.first.input_cost_per_token

    @property
    def output_cost_per_token(self) -> float | None:
        return self.first.output_cost_per_token

    @property
    def mode(self) -> str:
        return self.first.mode

    @property
    def supports_n(self) -> bool | None:
        """False if any deployment refuses n, True if all take it, else unknown."""
        known = [d.supports_n for d in self.deployments]
        if False in known:
            return False
        return True if known and all(known) else None

    @property
    def secrets(self) -> list[str]:
        return [s for d in self.deployments for s in d.secrets]

    @property
    def is_wildcard(self) -> bool:
        return "*" in self.name

    def match(self, requested: str) -> list[str] | None:
        """What each `*` of a wildcard name matched in `requested`; None when it does not match."""
        found = _pattern(self.name).fullmatch(requested)
        return list(found.groups()) if found else None

    def concrete(self, requested: str) -> ModelEntry | None:
        """The entry serving `requested` through this wildcard, or None when it does not match."""
        parts = self.match(requested)
        if parts is None:
            return None
        return ModelEntry(requested, [replace(d, model=_fill(d.model, parts, requested)) for d in self.deployments])


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile("(.+?)".join(re.escape(p) for p in name.split("*")))


def _fill(model: str, parts: list[str], requested: str) -> str:
    if "*" not in model:
        return model
    if model == "*":
        return requested
    out = model
    for part in parts:
        out = out.replace("*", part, 1)
    return out


def _cost(params: dict[str, Any], info: dict[str, Any], key: str, path: str) -> float | None:
    value = params.pop(key, info.get(key))
    return number(value, f"{path}.litellm_params.{key}")


def parse_deployment(raw: Any, path: str, position: int) -> tuple[str, Deployment]:
    raw = mapping(raw, path, ENTRY_KEYS)
    name = string(raw.get("model_name"), f"{path}.model_name")
    params = dict(mapping(raw.get("litellm_params"), f"{path}.litellm_params"))
    model = string(params.get("model"), f"{path}.litellm_params.model")
    info = mapping(raw.get("model_info"), f"{path}.model_info")
    p = f"{path}.litellm_params"
    if model.count("*") not in (0, name.count("*")) and model != "*":
        raise ConfigError(f"{p}.model", f"has {model.count('*')} `*` but model_name {name!r} has "
                          f"{name.count('*')}: each `*` is filled with what the name's `*` matched")
    if "*" in model and "*" not in name:
        raise ConfigError(f"{p}.model", "a `*` here needs a wildcard model_name to fill it")
    supports_n = params.pop("supports_n", info.get("supports_n"))
    weight = number(params.pop("weight", None), f"{p}.weight", exclusive_min=True)
    deployment = Deployment(
        id=string(info.get("id"), f"{path}.model_info.id", required=False) or f"{name}#{position}",
        model=model,
        rpm=integer(params.pop("rpm", info.get("rpm")), f"{p}.rpm", minimum=1),
        tpm=integer(params.pop("tpm", info.get("tpm")), f"{p}.tpm", minimum=1),
        weight=weight,
        input_cost_per_token=_cost(params, info, "input_cost_per_token", path),
        output_cost_per_token=_cost(params, info, "output_cost_per_token", path),
        supports_n=None if supports_n is None else boolean(supports_n, f"{path}.model_info.supports_n"),
        mode=choice(info.get("mode"), f"{path}.model_info.mode", MODES, default="chat"),
        params=params,
    )
    return name, deployment


def parse_model_list(raw: Any) -> dict[str, ModelEntry]:
    """model_name -> entry, in file order; a repeated model_name adds a deployment."""
    models: dict[str, ModelEntry] = {}
    ids: set[str] = set()
    for i, item in enumerate(raw if isinstance(raw, list) else _not_a_list(raw)):
        path = f"model_list[{i}]"
        name = string(mapping(item, path, ENTRY_KEYS).get("model_name"), f"{path}.model_name")
        entry = models.setdefault(name, ModelEntry(name))
        _, deployment = parse_deployment(item, path, len(entry.deployments))
        if deployment.id in ids:
            raise ConfigError(f"{path}.model_info.id", f"duplicate deployment id {deployment.id!r}")
        ids.add(deployment.id)
        if entry.deployments and deployment.mode != entry.mode:
            raise ConfigError(f"{path}.model_info.mode", f"{deployment.mode!r}, but {name!r}'s first deployment "
                              f"is {entry.mode!r}: deployments of one model_name serve the same API")
        entry.deployments.append(deployment)
    if not models:
        raise ConfigError("model_list", "must list at least one model")
    return models


def _not_a_list(raw: Any) -> list[Any]:
    if raw is None:
        return []
    raise ConfigError("model_list", f"must be a list, got {type(raw).__name__}")
