"""The `usc` stage: universal self-consistency (a picker) for free-form answers.

Majority voting needs answers that can be extracted and compared; free-form text
cannot. USC (Chen et al., 2023) shows the model all candidates at once and asks
which one is most consistent with the others, so "the majority" is judged by the
model. Like any LLM verdict it can be wrong; it picks, it never verifies.

    usc: {model: <model_list name>, max_candidates: 16, temperature: 0, max_tokens?: N}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from itsproxy.strategies.extract import Extractor
from itsproxy.strategies.ports import RunContext
from itsproxy.strategies.stages.judge import (
    UNPARSEABLE,
    answer_block,
    candidate_text,
    check_keys,
    failed_note,
    json_schema,
    model_name,
    parse_json_object,
    positive_int,
    request_text,
    temperature,
    verifier_messages,
)
from itsproxy.strategies.types import Candidate, SampleError, SpecError, Tally

ASK = ("Evaluate these responses. Select the most consistent response based on majority consensus. "
       'Reply with JSON: {"best": "<id>"}.')


@dataclass
class UscStage:
    model: str
    model_path: str
    max_candidates: int = 16
    temperature: float = 0.0
    max_tokens: int | None = None
    name: str = "usc"
    role: Literal["picker"] = "picker"
    extractor: Extractor | None = None  # free-form: nothing to extract

    @property
    def models(self) -> list[str]:
        return [self.model]

    @classmethod
    def build(cls, spec: Any, path: str) -> UscStage:
        spec = check_keys(spec, path, {"model", "max_candidates", "temperature", "max_tokens"})
        max_c = positive_int(spec, "max_candidates", path, 16)
        if max_c < 2:
            raise SpecError(f"{path}.max_candidates", "must be >= 2: consistency needs candidates to compare")
        return cls(model_name(spec, path), f"{path}.model", max_c, temperature(spec, path),
                   positive_int(spec, "max_tokens", path, None))

    async def pick(self, ctx: RunContext, candidates: list[Candidate]) -> Tally:
        if not candidates:
            return Tally({}, None, False, None)
        if len(candidates) == 1:
            return Tally({"usc": candidates[0].index}, candidates[0], False, None, ["usc: a single candidate"])
        shown = candidates[: self.max_candidates]
        reasons = [] if len(shown) == len(candidates) else [
            f"usc compared the first {len(shown)} of {len(candidates)} candidates (max_candidates)"]
        chosen, why = await self._ask(ctx, shown)
        if chosen is None:
            shown[0].notes.append(f"{why}; returned the first candidate")
            return Tally({}, shown[0], False, None, reasons + [f"{why}; returned the first candidate"])
        return Tally({"usc": chosen.index}, chosen, False, None, reasons + ["most consistent with the others (usc)"])

    async def aclose(self) -> None:
        return None

    async def _ask(self, ctx: RunContext, shown: list[Candidate]) -> tuple[Candidate | None, str]:
        ids = [str(i + 1) for i in range(len(shown))]
        body = "\n\n".join(answer_block(candidate_text(c), i) for c, i in zip(shown, ids))
        messages = verifier_messages(request_text(ctx.messages), body, "", ASK)
        params: dict[str, Any] = {"temperature": self.temperature,
                                  "response_format": json_schema("usc", {"best": {"type": "string", "enum": ids}})}
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        try:
            sample = (await ctx.sampler.sample(messages, model=self.model, n=1, phase="usc", params=params))[0]
        except SampleError as exc:
            return None, failed_note("usc", exc)
        best = _best(sample.text, ids)
        return (shown[ids.index(best)], "") if best is not None else (None, f"usc: {UNPARSEABLE}")


def _best(text: str, ids: list[str]) -> str | None:
    reply = parse_json_object(text)
    if reply is None:  # a bare id is an answer too
        bare = text.strip().strip('"').strip()
        return bare if bare in ids else None
    value = reply.get("best")
    if value is None and len(reply) == 1:  # models rename keys ("winner", "id"); one id-valued field is clear
        value = next(iter(reply.values()))
    value = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    return value if value in ids else None
