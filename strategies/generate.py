"""Candidate generation: samples at temperature, model pools, augmenting strings.

A batch is split into groups of (pool member, augmenting string); each group is
one `Sampler.sample` call with its `n` (the sampler decides between a native
`n` call and parallel calls). Groups run concurrently; a failed group degrades
the batch instead of failing it.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any

from strategies.types import Candidate, Sampler, SpecError
from strategies.search import parse_search

AUGMENT_AS = ("system", "suffix")


@dataclass
class PoolMember:
    model: str
    n: int
    temperature: float | None = None


@dataclass
class GenerateSpec:
    pool: list[PoolMember]
    temperature: float | None = None
    max_tokens: int | None = None
    augment: list[str] = field(default_factory=list)
    augment_as: str = "system"
    search: dict[str, Any] | None = None  # augment_search settings
    adaptive: dict[str, Any] | None = None

    @property
    def n(self) -> int:
        return sum(m.n for m in self.pool)


GENERATE_KEYS = {"model", "models", "n", "temperature", "max_tokens", "augment", "augment_as",
                 "augment_search", "adaptive"}


def _positive_int(value: Any, path: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(path, f"must be an integer >= 1, got {value!r}")
    return value


def _temperature(value: Any, path: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2:
        raise SpecError(path, f"must be a number in [0, 2], got {value!r}")
    return float(value)


def _model_name(value: Any, path: str, models: set[str]) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(path, "must name a model_list model_name")
    if value not in models:
        raise SpecError(path, f"unknown model {value!r}; model_list has {', '.join(sorted(models))}")
    return value


def parse_generate(raw: dict[str, Any], path: str, models: set[str]) -> GenerateSpec:
    for key in raw:
        if key not in GENERATE_KEYS:
            raise SpecError(f"{path}.{key}", f"unknown key (known: {', '.join(sorted(GENERATE_KEYS))})")
    if ("model" in raw) == ("models" in raw):
        raise SpecError(path, "needs exactly one of `model` or `models`")
    if "models" in raw:
        if not isinstance(raw["models"], list) or not raw["models"]:
            raise SpecError(f"{path}.models", "must be a non-empty list")
        pool = []
        for i, m in enumerate(raw["models"]):
            p = f"{path}.models[{i}]"
            if not isinstance(m, dict):
                raise SpecError(p, "must be a mapping {model, n, temperature?}")
            for key in m:
                if key not in ("model", "n", "temperature"):
                    raise SpecError(f"{p}.{key}", "unknown key (known: model, n, temperature)")
            pool.append(PoolMember(_model_name(m.get("model"), f"{p}.model", models),
                                   _positive_int(m.get("n"), f"{p}.n", 1),
                                   _temperature(m.get("temperature"), f"{p}.temperature")))
        if "n" in raw:
            raise SpecError(f"{path}.n", "with `models`, give each member its own n")
    else:
        pool = [PoolMember(_model_name(raw.get("model"), f"{path}.model", models),
                           _positive_int(raw.get("n"), f"{path}.n", 1))]
    augment = raw.get("augment") or []
    if not isinstance(augment, list) or not all(isinstance(s, str) and s for s in augment):
        raise SpecError(f"{path}.augment", "must be a list of non-empty strings")
    augment_as = raw.get("augment_as", "system")
    if augment_as not in AUGMENT_AS:
        raise SpecError(f"{path}.augment_as", f"must be one of {', '.join(AUGMENT_AS)}")
    max_tokens = raw.get("max_tokens")
    if max_tokens is not None:
        max_tokens = _positive_int(max_tokens, f"{path}.max_tokens", 1)
    return GenerateSpec(pool=pool, temperature=_temperature(raw.get("temperature"), f"{path}.temperature"),
                        max_tokens=max_tokens, augment=list(augment), augment_as=augment_as,
                        search=parse_search(raw, path))


def derive_seed(seed: int, *parts: Any) -> int:
    """A distinct, reproducible seed per candidate group (identical seeds would make identical candidates)."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def scale_pool(pool: list[PoolMember], n: int) -> list[int]:
    """Split n across the pool in proportion to each member's n (largest remainder)."""
    total = sum(m.n for m in pool)
    if n == total:
        return [m.n for m in pool]
    exact = [m.n * n / total for m in pool]
    counts = [int(x) for x in exact]
    order = sorted(range(len(pool)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def apply_augment(messages: list[dict[str, Any]], text: str, how: str) -> list[dict[str, Any]]:
    out = copy.deepcopy(messages)
    if how == "system":
        if out and out[0].get("role") in ("system", "developer") and isinstance(out[0].get("content"), str):
            out[0]["content"] = f"{out[0]['content']}\n\n{text}"
        else:
            out.insert(0, {"role": "system", "content": text})
        return out
    for m in reversed(out):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                m["content"] = [*content, {"type": "text", "text": text}]
            else:
                m["content"] = f"{content or ''}\n\n{text}"
            return out
    out.append({"role": "user", "content": text})
    return out


@dataclass
class Group:
    member: PoolMember
    augment_index: int | None
    count: int


def plan_groups(spec: GenerateSpec, n: int, augment_counts: list[int] | None = None) -> list[Group]:
    """Which model and augmenting string each of the n samples uses.

    Without augmenting strings, one group per pool member. With them, each
    member's samples are spread round-robin over the strings (or by
    `augment_counts`, the share a search policy chose).
    """
    groups: list[Group] = []
    offset = 0
    for member, count in zip(spec.pool, scale_pool(spec.pool, n)):
        if not spec.augment:
            if count:
                groups.append(Group(member, None, count))
            continue
        k = len(spec.augment)
        if augment_counts is not None:
            per = scale_counts(augment_counts, count)
        else:
            per = [count // k + (1 if (i - offset) % k < count % k else 0) for i in range(k)]
        offset = (offset + count) % k
        groups.extend(Group(member, i, c) for i, c in enumerate(per) if c)
    return groups


def scale_counts(weights: list[int], n: int) -> list[int]:
    return scale_pool([PoolMember("", max(w, 0) or 0) for w in weights], n) if sum(weights) else [0] * len(weights)


async def draw(
    sampler: Sampler,
    spec: GenerateSpec,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    *,
    n: int,
    start_index: int = 0,
    round: int = 0,
    seed: int | None = None,
    phase: str = "generate",
    augment_counts: list[int] | None = None,
) -> tuple[list[Candidate], list[BaseException]]:
    """Draw one batch. Returns the candidates in draw order and the errors of failed groups."""
    groups = plan_groups(spec, n, augment_counts)

    async def run(gi: int, group: Group):
        msgs = messages
        if group.augment_index is not None:
            msgs = apply_augment(messages, spec.augment[group.augment_index], spec.augment_as)
        call_params = dict(params)
        temperature = group.member.temperature if group.member.temperature is not None else spec.temperature
        if temperature is not None:
            call_params["temperature"] = temperature
        if spec.max_tokens is not None:
            call_params["max_tokens"] = spec.max_tokens
        if seed is not None:
            call_params["seed"] = derive_seed(seed, round, gi)
        return await sampler.sample(msgs, model=group.member.model, n=group.count, phase=phase, params=call_params)

    results = await asyncio.gather(*(run(i, g) for i, g in enumerate(groups)), return_exceptions=True)
    candidates: list[Candidate] = []
    errors: list[BaseException] = []
    for group, result in zip(groups, results):
        if isinstance(result, BaseException):
            if isinstance(result, asyncio.CancelledError):
                raise result
            errors.append(result)
            continue
        for sample in result:
            aug = None if group.augment_index is None else spec.augment[group.augment_index]
            candidates.append(Candidate(index=start_index + len(candidates), sample=sample, round=round,
                                        augment=aug, augment_index=group.augment_index))
    return candidates, errors
