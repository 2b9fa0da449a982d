"""What is measured: the scenarios, the generated proxy config, and each scenario's
direct baseline (the same upstream work issued straight to the simulator)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

KEY = "sk-bench-upstream"
# Every system under test checks a client key (LiteLLM's proxy refuses to start without one).
CLIENT_KEY = "sk-bench-client-6f1d0c2a9b8e4f7a3c5d2e1f0a9b8c7d"
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
# Prices set in model_list, as in the demo config: no litellm cost-map lookup is needed.
PRICES = {"input_cost_per_token": 0.00000015, "output_cost_per_token": 0.0000006}
SLOW_MS = 200  # the upstream latency of the parallelism check


@dataclass
class Scenario:
    key: str
    label: str
    model: str  # the model name a client sends to the proxy
    stream: bool = False
    direct_params: dict[str, Any] = field(default_factory=dict)  # the baseline's body, straight to the simulator
    direct_model: str = "sim"
    direct_fan: int = 1  # baseline: this many concurrent calls (the fan-out a proxy would do)
    weight: float = 1.0  # share of the request budget (vote routes make 8x the upstream work)

    def params(self) -> dict[str, Any]:
        return {"stream": True, "stream_options": {"include_usage": True}} if self.stream else {}


SCENARIOS = [
    Scenario("pass", "passthrough", "bench-pass"),
    Scenario("pass-stream", "passthrough, stream", "bench-pass", stream=True),
    Scenario("vote", "vote n=8, native n", "vote8", direct_params={"n": 8, "temperature": 0.8}, weight=0.5),
    Scenario("vote-fan", "vote n=8, fanned out", "vote8-fan", direct_model="sim@no_n",
             direct_params={"temperature": 0.8}, direct_fan=8, weight=0.35),
    Scenario("check", "check + vote + repair", "check-repair", direct_params={"n": 8, "temperature": 0.8},
             weight=0.35),
]


def _model(name: str, sim_url: str, options: str, supports_n: bool | None = None,
           prices: bool = True) -> dict[str, Any]:
    entry: dict[str, Any] = {"model_name": name,
                             "litellm_params": {"model": f"openai/{options}", "api_base": f"{sim_url}/v1",
                                                "api_key": KEY, **(PRICES if prices else {})}}
    if supports_n is not None:
        entry["model_info"] = {"supports_n": supports_n}
    return entry


def _vote(name: str, model: str) -> dict[str, Any]:
    return {"name": name, "match": {"model": name}, "generate": {"model": model, "n": 8, "temperature": 0.8},
            "select": [{"vote": {"extract": "number"}}], "limits": {"max_n": 16, "timeout_s": 60}}


def proxy_config(sim_url: str, prices: bool = True) -> dict[str, Any]:
    """The proxy's config for every scenario (prices=False: costs come from litellm's map)."""
    models = [_model("sim", sim_url, "sim", prices=prices),
              _model("sim-no-n", sim_url, "sim@no_n", supports_n=False, prices=prices),
              _model("sim-slow", sim_url, f"sim@latency_ms={SLOW_MS}", prices=prices),
              _model("sim-slow-no-n", sim_url, f"sim@no_n@latency_ms={SLOW_MS}", supports_n=False, prices=prices)]
    check = {"name": "check-repair", "match": {"model": "check-repair"},
             "generate": {"model": "sim", "n": 8, "temperature": 0.8},
             "select": [{"check": {"python": "itsproxy.proxy.demo_checks:check_sum"}}, {"vote": {"extract": "number"}}],
             "repair": {"rounds": 2}, "on_unverified": "best_effort", "limits": {"timeout_s": 60}}
    routes = [_vote("vote8", "sim"), _vote("vote8-fan", "sim-no-n"), _vote("vote8-slow", "sim-slow"),
              _vote("vote8-slow-fan", "sim-slow-no-n"), check,
              {"name": "bench-pass", "match": {"model": "*"}, "generate": {"model": "sim"}, "passthrough": True}]
    return {"model_list": models, "routes": routes, "server": {"api_keys": [CLIENT_KEY]}}


def write_yaml(path: str, data: dict[str, Any]) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path
