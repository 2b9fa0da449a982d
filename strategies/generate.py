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

from itsproxy.strategies.adaptive.rules import AdaptiveSpec, parse_adaptive
from itsproxy.strategies.ports import Sampler
from itsproxy.strategies.search.steps import StepsSpec, parse_steps
from itsproxy.strategies.search.strings import SearchSpec, parse_search
from itsproxy.strategies.types import Candidate, Sample, SpecError

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
    params: dict[str, Any] = field(default_factory=dict)  # OpenAI parameters the route forces (response_format ...)
    search: SearchSpec | None = None  # augment_search settings
    adaptive: AdaptiveSpec | None = None
    steps: StepsSpec | None = None  # search over reasoning steps instead of whole samples

    @property
    def n(self) -> int:
        return sum(m.n for m in self.pool)


GENERATE_KEYS = {"model", "models", "n", "temperature", "max_tokens", "augment", "augment_as",
                 "augment_search", "adaptive", "params", "steps"}


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
    adaptive = parse_adaptive(raw.get("adaptive"), f"{path}.adaptive")
    if adaptive is not None and adaptive.mode == "stream_n" and (len(pool) > 1 or augment):
        raise SpecError(f"{path}.adaptive.mode", "stream_n is one call: it needs a single model and no augment")
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise SpecError(f"{path}.params", "must be a mapping of OpenAI parameters, e.g. {response_format: ...}")
    steps = parse_steps(raw.get("steps"), f"{path}.steps", models)
    if steps is not None and "n" in raw:
        raise SpecError(f"{path}.n", "with steps, the search's width, expansions and rollouts set the compute")
    if steps is not None and (len(pool) > 1 or augment or adaptive is not None):
        raise SpecError(f"{path}.steps", "a search over steps continues one model's answer: it needs a single "
                        "`model`, no augment and no adaptive")
    return GenerateSpec(pool=pool, temperature=_temperature(raw.get("temperature"), f"{path}.temperature"),
                        max_tokens=max_tokens, augment=list(augment), augment_as=augment_as, params=dict(params),
                        search=parse_search(raw, path),
                        adaptive=adaptive, steps=steps)


def derive_seed(seed: int, *parts: Any) -> int:
    """A distinct, reproducible seed per candidate group (identical seeds would make identical candidates)."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


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


def interleave(weights: list[int], length: int) -> list[int]:
    """Indices 0..k-1 spread in proportion to `weights` (smooth weighted round-robin),
    so any prefix of the sequence is itself close to proportional."""
    total = sum(w for w in weights if w > 0)
    if total <= 0:
        return [i % len(weights) for i in range(length)]
    current = [0] * len(weights)
    out = []
    for _ in range(length):
        for i, w in enumerate(weights):
            current[i] += max(w, 0)
        pick = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[pick] -= total
        out.append(pick)
    return out


def plan_slots(spec: GenerateSpec, start: int, n: int, augment_counts: list[int] | None = None,
               ) -> list[tuple[int, int | None]]:
    """(pool member, augmenting string) for candidates start..start+n-1 of a request.

    Candidate i's model follows an interleaving of the pool in proportion to
    each member's n; its string follows that member's own count of samples so
    far, round-robin over the strings (or in proportion to `augment_counts`,
    the share a search policy chose). Batches drawn one after another so see
    the same mix as one big batch.
    """
    members = interleave([m.n for m in spec.pool], start + n)
    k = len(spec.augment)
    weights = augment_counts if augment_counts is not None else [1] * k
    strings = interleave(weights, start + n) if k else []
    seen = [0] * len(spec.pool)
    slots = []
    for i, m in enumerate(members):
        occurrence = seen[m]
        seen[m] += 1
        if i >= start:
            slots.append((m, strings[occurrence] if k else None))
    return slots


def plan_groups(spec: GenerateSpec, n: int, augment_counts: list[int] | None = None, offset: int = 0) -> list[Group]:
    """The batch's slots grouped by (model, string): each group is one call with its n."""
    counts: dict[tuple[int, int | None], int] = {}
    for slot in plan_slots(spec, offset, n, augment_counts):
        counts[slot] = counts.get(slot, 0) + 1
    return [Group(spec.pool[m], a, c) for (m, a), c in counts.items()]


def member_params(spec: GenerateSpec, member: PoolMember, params: dict[str, Any], seed: int | None,
                  ) -> dict[str, Any]:
    """A call's parameters: the client's, then the route's own (params, temperature, max_tokens), then the seed."""
    out = {**params, **spec.params}
    temperature = member.temperature if member.temperature is not None else spec.temperature
    if temperature is not None:
        out["temperature"] = temperature
    if spec.max_tokens is not None:
        out["max_tokens"] = spec.max_tokens
    if seed is not None:
        out["seed"] = seed
    return out


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
    stream: bool = False,
) -> tuple[list[Candidate], list[BaseException]]:
    """Draw one batch. Returns the candidates in draw order and the errors of failed groups.

    `stream`: draw one candidate (n must be 1) over a streaming call, so that a
    caller cancelling it stops upstream decoding and still meters what was produced.
    """
    # Later batches continue the round-robin where earlier ones stopped.
    groups = plan_groups(spec, n, augment_counts, offset=start_index)

    async def run(gi: int, group: Group) -> list[Sample]:
        msgs = messages
        if group.augment_index is not None:
            msgs = apply_augment(messages, spec.augment[group.augment_index], spec.augment_as)
        call_params = member_params(spec, group.member, params,
                                    None if seed is None else derive_seed(seed, round, start_index, gi))
        if stream:
            return [await sampler.sample_streaming(msgs, model=group.member.model, phase=phase, params=call_params)]
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
