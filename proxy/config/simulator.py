"""The `simulator:` section: a simulated upstream `itsproxy serve` starts beside the proxy.

Every key is a `SimConfig` field (see simulator/config.py), plus `host` and `port`.
Parsed here, at load, with the same key-path errors as every other section: a
typo or a bad value stops `check-config`, never `serve` half-way through starting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from itsproxy.proxy.config_fields import ConfigError, boolean, integer, mapping, number, string
from itsproxy.proxy.simulator.config import BOOL_FIELDS, FIELDS, INT_FIELDS, SimConfig

OWN_KEYS = {"host", "port"}


@dataclass(frozen=True)
class SimulatorSettings:
    sim: SimConfig
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port


def _field(name: str, value: Any, path: str) -> Any:
    if name in BOOL_FIELDS:
        return boolean(value, path)
    if name in INT_FIELDS:
        return integer(value, path, minimum=0 if name == "seed" else 1)
    if name == "boosts":
        boosts = mapping(value, path)
        return {str(k): number(v, f"{path}.{k}", minimum=-1.0, maximum=1.0) for k, v in boosts.items()}
    if name == "accuracy":
        if isinstance(value, list):
            return [number(v, f"{path}[{i}]", maximum=1.0) for i, v in enumerate(value)]
        return value if isinstance(value, str) else number(value, path, maximum=1.0)
    return number(value, path)


def parse_simulator(raw: Any, path: str = "simulator") -> SimulatorSettings | None:
    if raw is None:
        return None
    raw = mapping(raw, path, set(FIELDS) | OWN_KEYS)
    values = {k: _field(k, v, f"{path}.{k}") for k, v in raw.items() if k not in OWN_KEYS and v is not None}
    try:
        sim = SimConfig(**values)
    except (TypeError, ValueError) as exc:  # SimConfig's own range checks name the field first
        name = str(exc).split(" ", 1)[0]
        raise ConfigError(f"{path}.{name}" if name in FIELDS else path, str(exc)) from None
    port = integer(raw.get("port"), f"{path}.port", default=0, minimum=0) or 0
    if port > 65535:
        raise ConfigError(f"{path}.port", f"must be a TCP port (0-65535), got {port}")
    return SimulatorSettings(
        sim=sim,
        host=string(raw.get("host"), f"{path}.host", required=False) or "127.0.0.1",
        port=port,
    )


__all__ = ["SimulatorSettings", "parse_simulator"]
