"""`os.environ/NAME` references (LiteLLM's convention), resolved in ONE place.

The loader resolves every string value of the document once, before any section
is parsed, so no section parser (nor a strategy) ever sees a reference. Mapping
keys are left alone; the one section whose keys may be references (`budgets.keys`)
calls `env_ref` on them itself. An unset or empty variable is a config error: an
empty API key would otherwise quietly open or break something.
"""

from __future__ import annotations

import math
import os
from typing import Any

from itsproxy.proxy.config_fields import ConfigError

ENV_PREFIX = "os.environ/"
# Mappings whose keys are API keys: their entries are named by position in error paths.
SECRET_KEYED = frozenset({"budgets.keys"})


def is_env_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(ENV_PREFIX)


def env_ref(value: str, path: str) -> str:
    """`value` itself, or the variable it names when it is `os.environ/NAME`."""
    if not is_env_ref(value):
        return value
    name = value[len(ENV_PREFIX):]
    if not name:
        raise ConfigError(path, f"{ENV_PREFIX} names no environment variable")
    if name not in os.environ:
        raise ConfigError(path, f"environment variable {name} is not set")
    if not os.environ[name]:
        raise ConfigError(path, f"environment variable {name} is set but empty")
    return os.environ[name]


def child(path: str, key: Any, index: int | None = None) -> str:
    if path in SECRET_KEYED and not is_env_ref(key):
        return f"{path}[{index}]"  # the key is an API key: never in a message
    return f"{path}.{key}" if path else str(key)


def resolve_document(value: Any, path: str = "") -> Any:
    """A copy with every `os.environ/` string resolved; a NaN or infinite number
    anywhere is refused here too (no setting of ours means either)."""
    if isinstance(value, str):
        return env_ref(value, path)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(path, f"must be a finite number, got {value}")
    if isinstance(value, dict):
        return {k: resolve_document(v, child(path, k, i)) for i, (k, v) in enumerate(value.items())}
    if isinstance(value, list):
        return [resolve_document(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value
