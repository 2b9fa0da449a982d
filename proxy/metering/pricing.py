"""Prices per token: model_list overrides, else litellm's offline cost map.

An unknown price is None, never zero. Prices are resolved once per model at
startup, so a request never reads the map (or imports anything).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from itsproxy.proxy.config import ModelEntry

COST_MAP = "model_prices_and_context_window_backup.json"  # what LITELLM_LOCAL_MODEL_COST_MAP loads


@dataclass(frozen=True)
class Prices:
    input: float | None
    output: float | None
    cached: float | None  # cache-read price per prompt token; None: billed as input

    def cost(self, prompt: int, completion: int, cached: int = 0) -> float | None:
        if self.input is None or self.output is None:
            return None if (prompt or completion) else 0.0
        cached = min(cached, prompt)
        cached_price = self.cached if self.cached is not None else self.input
        return (prompt - cached) * self.input + cached * cached_price + completion * self.output


@lru_cache(maxsize=1)
def cost_map() -> dict[str, Any]:
    """litellm's bundled price file, read directly: the same data without importing litellm (seconds)."""
    spec = importlib.util.find_spec("litellm")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return {}
    try:
        with open(os.path.join(spec.submodule_search_locations[0], COST_MAP), encoding="utf-8") as fh:
            return json.load(fh)
    except OSError:
        return {}


def map_entry(model: str) -> dict[str, Any]:
    prices = cost_map()
    if model in prices:
        return prices[model]
    bare = model.split("/", 1)[1] if "/" in model else None
    return prices.get(bare, {}) if bare else {}


def prices_for(entry: ModelEntry) -> Prices:
    if entry.input_cost_per_token is not None and entry.output_cost_per_token is not None:
        return Prices(entry.input_cost_per_token, entry.output_cost_per_token, None)
    found = map_entry(entry.model)
    price_in, price_out = entry.input_cost_per_token, entry.output_cost_per_token
    if price_in is None:
        price_in = found.get("input_cost_per_token")
    if price_out is None:
        price_out = found.get("output_cost_per_token")
    # The map's cache price only applies to the map's own input price.
    cached = found.get("cache_read_input_token_cost") if entry.input_cost_per_token is None else None
    return Prices(price_in, price_out, cached)
