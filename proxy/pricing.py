"""Cost of one upstream call: per-model overrides from model_list, else
litellm's offline cost map. An unknown price is None, never zero."""

from __future__ import annotations

from functools import lru_cache

from proxy.config import ModelEntry
from proxy.llm import model_cost_entry


@lru_cache(maxsize=256)
def _map_prices(model: str) -> tuple[float | None, float | None, float | None]:
    entry = model_cost_entry(model) or {}
    return (entry.get("input_cost_per_token"), entry.get("output_cost_per_token"),
            entry.get("cache_read_input_token_cost"))


def call_cost(entry: ModelEntry, prompt: int, completion: int, cached: int = 0) -> float | None:
    map_in, map_out, map_cached = _map_prices(entry.model)
    price_in = entry.input_cost_per_token if entry.input_cost_per_token is not None else map_in
    price_out = entry.output_cost_per_token if entry.output_cost_per_token is not None else map_out
    if price_in is None or price_out is None:
        return None if (prompt or completion) else 0.0
    cached = min(cached, prompt)
    # Cached prompt tokens are billed at the cache price when the map knows one.
    price_cached = map_cached if (map_cached is not None and entry.input_cost_per_token is None) else price_in
    return (prompt - cached) * price_in + cached * price_cached + completion * price_out
