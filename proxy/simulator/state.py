"""The simulator's live state: its settings, its random streams and what it served (`/stats`).

Shared by every endpoint module, so the billing accounting is one thing whatever the surface.
"""

from __future__ import annotations

import random
from typing import Any

from .config import SimConfig, config_for_model

STAT_KEYS = ("requests", "choices", "prompt_tokens", "completion_tokens", "total_tokens", "errors",
             "streams", "streams_cancelled", "completion_tokens_sent_cancelled", "reward_requests")


class Stats:
    """What was served: tokens are those reported in usage (what a client is billed);
    for a stream closed early, the prompt plus the completion tokens actually sent."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = dict.fromkeys(STAT_KEYS, 0)
        self.by_model: dict[str, dict[str, int]] = {}

    def add(self, model: str, **deltas: int) -> None:
        per = self.by_model.get(model)
        if per is None:
            per = self.by_model[model] = dict.fromkeys(STAT_KEYS, 0)
        for key, value in deltas.items():
            self.total[key] += value
            per[key] += value

    def billed(self, model: str, prompt: int, completion: int, **extra: int) -> None:
        self.add(model, prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 **extra)

    def snapshot(self) -> dict[str, Any]:
        return {**self.total, "by_model": {m: dict(v) for m, v in self.by_model.items()}}


class SimState:
    def __init__(self, config: SimConfig) -> None:
        self.stats = Stats()
        self.closing = False  # set on shutdown: hanging requests give up
        self.set_config(config)

    def set_config(self, config: SimConfig) -> None:
        old = getattr(self, "config", None)
        self.config = config
        self._models: dict[str, tuple[str, SimConfig]] = {}
        if old is None or old.seed != config.seed:
            self.stream_rng = random.Random(config.seed)
            self.fault_rng = random.Random(f"faults|{config.seed}")

    def config_for(self, model: str) -> tuple[str, SimConfig]:
        hit = self._models.get(model)
        if hit is None:
            if len(self._models) > 4096:
                self._models.clear()
            hit = self._models[model] = config_for_model(self.config, model)
        return hit
