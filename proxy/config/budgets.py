"""The `budgets:` section: per API key daily limits (the service is metering/budgets.py).

    budgets:
      tokens_per_day: 200000        # null / absent: no token limit
      cost_usd_per_day: 5.0         # null / absent: no cost limit
      rpm_limit: 60                 # requests per minute per key (LiteLLM's key rpm_limit), sliding 60 s
      tpm_limit: 100000             # tokens metered per minute per key (LiteLLM's key tpm_limit)
      path: null                    # SQLite file; default <server.state_dir>/budgets.sqlite3
      on_state_error: closed        # store corrupt/locked/down: closed = 503 (no unmetered spend),
                                    # open = admit without a budget (spend not recorded)
      state_timeout_s: 0.5          # how long one store operation may take before the policy answers
      reserve_completion_tokens: 4096  # reserved per candidate for a request that sets no max_tokens
      keys:                         # per-key overrides; a limit set to null lifts it for that key
        os.environ/TEAM_KEY: {tokens_per_day: 1000000}
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

from itsproxy.proxy.config.env import env_ref, is_env_ref
from itsproxy.proxy.config_fields import ConfigError, choice, integer, mapping, number, string

LIMIT_KEYS = {"tokens_per_day", "cost_usd_per_day", "rpm_limit", "tpm_limit"}


@functools.lru_cache(maxsize=1024)  # a handful of keys, hashed on every request
def key_id(key: str) -> str:
    """How a key is stored and looked up: a SHA-256 prefix, never the key in clear."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BudgetLimits:
    tokens_per_day: int | None = None
    cost_usd_per_day: float | None = None
    rpm_limit: int | None = None  # requests per minute (metering/limits.py), shared across replicas on Redis
    tpm_limit: int | None = None  # tokens per minute, as metered


@dataclass
class BudgetConfig:
    default: BudgetLimits
    path: str | None = None
    overrides: dict[str, BudgetLimits] = field(default_factory=dict)  # key id -> limits
    on_state_error: str = "closed"  # a budget exists to cap spend: by default a broken store refuses
    state_timeout_s: float = 0.5
    reserve_completion_tokens: int = 4096


def _limits(raw: dict[str, Any], path: str, base: BudgetLimits) -> BudgetLimits:
    # An explicit null lifts the limit; an absent key inherits the default.
    tokens = (integer(raw["tokens_per_day"], f"{path}.tokens_per_day", minimum=1)
              if "tokens_per_day" in raw else base.tokens_per_day)
    cost = (number(raw["cost_usd_per_day"], f"{path}.cost_usd_per_day", exclusive_min=True)
            if "cost_usd_per_day" in raw else base.cost_usd_per_day)
    rates = [integer(raw[k], f"{path}.{k}", minimum=1) if k in raw else getattr(base, k)
             for k in ("rpm_limit", "tpm_limit")]
    return BudgetLimits(tokens, cost, *rates)


def parse_budgets(raw: Any) -> BudgetConfig | None:
    """The `budgets:` section; None when absent."""
    if raw is None:
        return None
    raw = mapping(raw, "budgets", LIMIT_KEYS | {"path", "keys", "on_state_error", "state_timeout_s",
                                                "reserve_completion_tokens"})
    default = _limits(raw, "budgets", BudgetLimits())
    overrides: dict[str, BudgetLimits] = {}
    keys = mapping(raw.get("keys"), "budgets.keys")
    for i, (name, body) in enumerate(keys.items()):
        # The path names the entry by position: an API key must not end up in an error message.
        p = f"budgets.keys.{name}" if is_env_ref(name) else f"budgets.keys[{i}]"
        if not isinstance(name, str) or not name:
            raise ConfigError(p, "must be a non-empty API key or os.environ/NAME")
        overrides[key_id(env_ref(name, p))] = _limits(mapping(body, p, LIMIT_KEYS), p, default)
    d = BudgetConfig(default)
    return BudgetConfig(
        default, string(raw.get("path"), "budgets.path", required=False), overrides,
        on_state_error=choice(raw.get("on_state_error"), "budgets.on_state_error", ("closed", "open"),
                              default=d.on_state_error),
        state_timeout_s=number(raw.get("state_timeout_s"), "budgets.state_timeout_s", default=d.state_timeout_s,
                               exclusive_min=True) or d.state_timeout_s,
        reserve_completion_tokens=integer(raw.get("reserve_completion_tokens"), "budgets.reserve_completion_tokens",
                                          default=d.reserve_completion_tokens, minimum=1)
        or d.reserve_completion_tokens)
