"""The `reward` stage: a learned verifier (a scorer).

A discriminative reward model can rank candidates better than an LLM asked
"is this right?", but it gives no guarantee: scores order candidates, they
never make one verified. Two shapes:

    reward: {url: http://host/reward, api: generic|vllm_classify|vllm_pooling,
             model?: name, timeout_s: 10, label?: correct|<index> (default: the last class),
             normalize: auto|logistic|none}
    reward: {generative: {model: <model_list name>, rubric?: ..., temperature?: 0}}

The endpoint is config only (never taken from a request). Generic contract:
POST {"prompt": <last user text>, "candidates": [text, ...]} -> {"scores": [float, ...]}.
The call itself goes through the request's `MeteredHttp` port: the proxy does
the HTTP and meters it (phase `reward`). Normalisation (`auto`): a batch
already within [0, 1] is taken as probabilities;
otherwise every raw score goes through the logistic 1/(1+exp(-x)), which keeps
the order. Any failure (HTTP, timeout, bad JSON, wrong length) is a note on every
candidate and no scores: never a crash. Score keys follow `itsproxy.strategies.stages.judge`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

from itsproxy.strategies.ports import EndpointError, RunContext
from itsproxy.strategies.stages.judge import (
    ask_yes_no,
    bounded_gather,
    candidate_text,
    check_keys,
    choice,
    clear_score,
    last_user_text,
    model_name,
    set_score,
    temperature,
)
from itsproxy.strategies.types import Candidate, SpecError

APIS = ("generic", "vllm_classify", "vllm_pooling")


class RewardError(Exception):
    """The endpoint's answer could not be used; the message becomes the candidates' note."""


def logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def normalise(raw: list[float], how: str) -> list[float]:
    if how == "none" or (how == "auto" and all(0.0 <= x <= 1.0 for x in raw)):
        return [min(max(x, 0.0), 1.0) for x in raw]
    return [logistic(x) for x in raw]


def number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RewardError(f"non-numeric score {value!r}")
    return float(value)


def last_number(value: Any) -> float:
    # vLLM pooling returns [p] for a sequence head, or one row per token: the last one scores the whole.
    while isinstance(value, list) and value:
        value = value[-1]
    return number(value)


@dataclass
class RewardStage:
    url: str | None = None
    api: str = "generic"
    model: str | None = None  # vLLM's served model name (not a model_list name)
    timeout_s: float = 10.0
    label: str | int | None = None  # vllm_classify: the class meaning "correct" (name or index)
    normalize: str = "auto"
    generative: dict[str, Any] | None = None  # {model, rubric, temperature}
    name: str = "reward"
    role: Literal["scorer"] = "scorer"
    incremental: bool = True  # each candidate's score stands on its own
    _label_index: int | None = field(default=None, repr=False)

    @property
    def models(self) -> list[str]:
        """model_list names this stage calls (the lead checks them against model_list)."""
        return [self.generative["model"]] if self.generative else []

    @classmethod
    def build(cls, spec: Any, path: str) -> RewardStage:
        spec = check_keys(spec, path, {"url", "api", "model", "timeout_s", "label", "normalize", "generative"})
        if "generative" in spec:
            if len(spec) > 1:
                other = sorted(set(spec) - {"generative"})[0]
                raise SpecError(f"{path}.{other}", "does not apply with `generative` (an LLM, not an endpoint)")
            gpath = f"{path}.generative"
            gen = check_keys(spec["generative"], gpath, {"model", "rubric", "temperature"})
            rubric = gen.get("rubric", "")
            if not isinstance(rubric, str):
                raise SpecError(f"{gpath}.rubric", "must be a string")
            return cls(generative={"model": model_name(gen, gpath), "model_path": f"{gpath}.model",
                                   "rubric": rubric.strip(), "temperature": temperature(gen, gpath)})
        return cls(url=_url(spec, path), api=choice(spec, "api", path, APIS), model=_optional_str(spec, "model", path),
                   timeout_s=_timeout(spec, path), label=_label(spec, path),
                   normalize=choice(spec, "normalize", path, ("auto", "logistic", "none")))

    @property
    def model_path(self) -> str | None:
        return self.generative["model_path"] if self.generative else None

    async def apply(self, ctx: RunContext, candidates: list[Candidate]) -> None:
        if not candidates:
            return
        if self.generative:
            await self._generative(ctx, candidates)
            return
        try:
            scores = await self._endpoint_scores(ctx, [candidate_text(c) for c in candidates])
        except RewardError as exc:
            return _fail(candidates, str(exc))
        except (TypeError, ValueError, KeyError, IndexError) as exc:  # an odd shape we did not foresee
            return _fail(candidates, f"malformed reply ({type(exc).__name__})")
        for c, s in zip(candidates, scores):
            set_score(c, "reward", s)

    async def _generative(self, ctx: RunContext, candidates: list[Candidate]) -> None:
        g = self.generative
        assert g is not None
        results = await bounded_gather(
            ask_yes_no(ctx, model=g["model"], phase="reward", stage="reward", text=candidate_text(c),
                       rubric=g["rubric"], temperature=g["temperature"]) for c in candidates)
        for c, (p, notes) in zip(candidates, results):
            if p is None:
                clear_score(c)
            else:
                set_score(c, "reward", p)
            c.notes.extend(notes)

    async def _endpoint_scores(self, ctx: RunContext, texts: list[str]) -> list[float]:
        prompt = last_user_text(ctx.messages)
        if self.api == "generic":
            payload = await self._post(ctx, {"prompt": prompt, "candidates": texts})
            raw = payload.get("scores")
            if not isinstance(raw, list):
                raise RewardError("reply has no `scores` list")
            return self._check(texts, normalise([number(x) for x in raw], self.normalize))
        body: dict[str, Any] = {"input": [f"{prompt}\n\n{t}" for t in texts]}
        if self.model:
            body["model"] = self.model
        data = (await self._post(ctx, body)).get("data")
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise RewardError("reply has no `data` list")
        data = sorted(data, key=lambda d: d.get("index", 0))
        if self.api == "vllm_pooling":
            return self._check(texts, normalise([last_number(d.get("data")) for d in data], self.normalize))
        probs = [d.get("probs") for d in data]
        if not all(isinstance(p, list) and p for p in probs):
            raise RewardError("reply has no `probs`")
        index = self._class_index(data)
        if any(index >= len(p) for p in probs):
            raise RewardError(f"class index {index} out of range")
        return self._check(texts, [min(max(number(p[index]), 0.0), 1.0) for p in probs])

    def _check(self, texts: list[str], scores: list[float]) -> list[float]:
        if len(scores) != len(texts):
            raise RewardError(f"{len(scores)} scores for {len(texts)} candidates")
        return scores

    def _class_index(self, data: list[dict[str, Any]]) -> int:
        """Where the "correct" class sits in `probs`: configured, learned, or the last class."""
        if isinstance(self.label, int):
            return self.label
        if self._label_index is not None or self.label is None:
            return self._label_index if self._label_index is not None else len(data[0]["probs"]) - 1
        # vLLM reports only the top class's name: an item whose top class is our label shows its index.
        for d in data:
            if d.get("label") == self.label:
                self._label_index = max(range(len(d["probs"])), key=lambda i: d["probs"][i])
                return self._label_index
        if all(len(d["probs"]) == 2 for d in data):  # binary, and our label never on top: the other class
            return 1 - max(range(2), key=lambda i: data[0]["probs"][i])
        raise RewardError(f"cannot tell which class is {self.label!r}; configure label as an index")

    async def aclose(self) -> None:
        return None  # holds no client: the proxy's MeteredHttp does the calls

    async def _post(self, ctx: RunContext, body: dict[str, Any]) -> dict[str, Any]:
        """One POST through the request's metered port (recorded under phase `reward`)."""
        if ctx.http is None:
            raise RewardError("no endpoint client in this context")
        assert self.url is not None  # set for every non-generative stage (build)
        try:
            return await ctx.http.post_json(self.url, body, phase="reward", model=self.model or _host(self.url),
                                            timeout=self.timeout_s)
        except EndpointError as exc:
            raise RewardError(str(exc)) from None


def _fail(candidates: list[Candidate], why: str) -> None:
    for c in candidates:
        clear_score(c)
        c.notes.append(f"reward: {why}")


def _host(url: str) -> str:
    return urlparse(url).netloc


def _url(spec: dict[str, Any], path: str) -> str:
    url = spec.get("url")
    parsed = urlparse(url) if isinstance(url, str) else None
    if not isinstance(url, str) or parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SpecError(f"{path}.url", "is required: an http(s) URL of the reward endpoint (or use `generative`)")
    return url


def _optional_str(spec: dict[str, Any], key: str, path: str) -> str | None:
    value = spec.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise SpecError(f"{path}.{key}", "must be a non-empty string")
    return value


def _timeout(spec: dict[str, Any], path: str) -> float:
    value = spec.get("timeout_s", 10)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise SpecError(f"{path}.timeout_s", f"must be a number > 0, got {value!r}")
    return float(value)


def _label(spec: dict[str, Any], path: str) -> str | int | None:
    value = spec.get("label")
    if value is None:
        return None
    if spec.get("api", "generic") != "vllm_classify":
        raise SpecError(f"{path}.label", "applies to api: vllm_classify only")
    if isinstance(value, bool) or not (isinstance(value, str) and value or isinstance(value, int) and value >= 0):
        raise SpecError(f"{path}.label", "must be a class name or a class index >= 0")
    return value
