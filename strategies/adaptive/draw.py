"""Drawing under an adaptive stopping rule: stop once the answer is settled.

Two ways to draw (see `AdaptiveSpec.mode`): batches decided between batches,
or single-candidate streams kept in flight and cancelled the moment the rule
is met (whatever they produced is metered as `cancelled` by the sampler).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from itsproxy.strategies.adaptive.rules import (
    AdaptiveSpec,
    Decision,
    mean_completion_tokens,
    next_batch,
    next_verified_batch,
    should_stop,
    stop_info,
    stop_on_verified,
)
from itsproxy.strategies.extract import Extractor, extract_answers
from itsproxy.strategies.generate import GenerateSpec, derive_seed, draw, member_params
from itsproxy.strategies.ports import Filter, RunContext, Scorer
from itsproxy.strategies.types import AdaptiveStop, Candidate, SampleError


@dataclass
class Drawn:
    candidates: list[Candidate] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    attempted: int = 0  # draws started
    finished: int = 0  # draws done, with or without a candidate
    decision: Decision | None = None

    def answers(self) -> list[str | None]:
        return [c.answer for c in self.candidates]

    def stop(self, max_n: int) -> AdaptiveStop:
        decision = self.decision or Decision(True, "max_n")
        return stop_info(decision, self.attempted, max_n, mean_completion_tokens(self.candidates))


class AdaptiveDraw:
    """One request's adaptive draw for round 0: extracts, checks (and scores) as it draws."""

    def __init__(self, generate: GenerateSpec, extractor: Extractor | None, filters: list[Filter],
                 scorers: list[Scorer], ctx: RunContext, spec: AdaptiveSpec, messages: list[dict[str, Any]],
                 augment_counts: list[int] | None) -> None:
        self.generate, self.extractor, self.filters = generate, extractor, filters
        self.ctx, self.spec = ctx, spec
        self.messages, self.counts = messages, augment_counts
        self.max_n = ctx.n
        self.out = Drawn()
        # Scorer routes (no vote): score each batch as it arrives, stop once one scores high enough.
        self.scorers = scorers if extractor is None else []

    def decide(self) -> Decision:
        cap = self.ctx.spend_cap_reached(self.out.candidates)
        if cap is not None:  # stop drawing, decide with what is there
            return Decision(True, cap, None, self.spec.rule)
        if self.scorers and not self.filters:
            return self._decide_on_scores()
        if self.filters:
            d = stop_on_verified(self.spec, self.out.candidates, self.max_n)
            if not d.stop and self.out.finished >= self.max_n:
                return Decision(True, "max_n", d.posterior, self.spec.rule)
            return d
        return should_stop(self.spec, self.out.answers(), self.out.finished, self.max_n)

    def _decide_on_scores(self) -> Decision:
        best = max((c.scores["score"] for c in self.out.candidates if "score" in c.scores), default=None)
        if best is not None and best >= self.spec.confidence and self.out.finished >= self.spec.min:
            return Decision(True, "score", best, "score")
        return Decision(self.out.finished >= self.max_n, "max_n" if self.out.finished >= self.max_n else
                        "not_confident", best, "score")

    def next_size(self) -> int:
        left = self.max_n - self.out.attempted
        if self.scorers and not self.filters:
            return max(0, min(left, self.spec.batch))
        if self.filters:
            k = next_verified_batch(self.spec, self.out.candidates, self.max_n)
        else:
            k = next_batch(self.spec, self.out.answers(), self.out.attempted, self.max_n)
        return max(0, min(left, k))

    async def _one_batch(self, k: int, stream: bool, start: int | None = None,
                         ) -> tuple[list[Candidate], list[BaseException]]:
        if start is None:
            start = self.out.attempted
            self.out.attempted += k
        batch, errors = await draw(self.ctx.sampler, self.generate, self.messages, self.ctx.params, n=k,
                                   start_index=start, seed=self.ctx.seed, augment_counts=self.counts,
                                   stream=stream)
        self.out.finished += k
        extract_answers(self.extractor, batch)
        for check in self.filters:
            await check.apply(self.ctx, batch)
        for scorer in self.scorers:
            await scorer.apply(self.ctx, batch)
        return batch, errors

    def _take(self, batch: list[Candidate], errors: list[BaseException]) -> None:
        self.out.candidates += batch
        self.out.errors += errors

    async def run(self) -> Drawn:
        if self.spec.mode == "stream":
            await self._streams()
        elif self.spec.mode == "stream_n":
            await self._stream_n()
        else:
            await self._batches()
        self.out.candidates.sort(key=lambda c: c.index)
        return self.out

    async def _batches(self) -> None:
        while (k := self.next_size()) > 0:
            self._take(*await self._one_batch(k, stream=False))
            self.out.decision = self.decide()
            if self.out.decision.stop:
                return

    async def _streams(self) -> None:
        pending: set[asyncio.Task[tuple[list[Candidate], list[BaseException]]]] = set()
        try:
            while True:
                while len(pending) < self.spec.batch and self.out.attempted < self.max_n:
                    start = self.out.attempted  # reserved now: the task may not run before the next check
                    self.out.attempted += 1
                    pending.add(asyncio.ensure_future(self._one_batch(1, stream=True, start=start)))
                if not pending:
                    return
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self._take(*task.result())
                self.out.decision = self.decide()
                if self.out.decision.stop:
                    return
        finally:
            for task in pending:  # the rule is met: close what is still decoding
                task.cancel()
            if pending:
                results = await asyncio.gather(*pending, return_exceptions=True)
                for result in results:  # a stream that finished meanwhile was paid for: it votes
                    if isinstance(result, tuple):
                        self._take(*result)

    async def _stream_n(self) -> None:
        """One streaming call with n = max; each finished choice is a candidate."""
        gen = self.generate
        seed = None if self.ctx.seed is None else derive_seed(self.ctx.seed, 0, 0, 0)
        params = member_params(gen, gen.pool[0], self.ctx.params, seed)
        choices = self.ctx.sampler.stream_choices(self.messages, model=gen.pool[0].model, n=self.max_n,
                                                  params=params)
        self.out.attempted = self.max_n
        try:
            async for sample in choices:
                c = Candidate(index=len(self.out.candidates), sample=sample)
                self.out.finished += 1
                extract_answers(self.extractor, [c])
                for stage in self.filters:
                    await stage.apply(self.ctx, [c])
                self._take([c], [])
                self.out.decision = self.decide()
                if self.out.decision.stop and self.out.decision.reason != "max_n":
                    break  # at max_n every choice is in: let the stream end with its usage
        except SampleError as exc:
            self.out.errors.append(exc)
        finally:
            await choices.aclose()  # stops the choices still decoding
        # `drawn` counts the choices that finished; the rest were cut short.
        self.out.attempted = self.out.finished
