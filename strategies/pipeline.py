"""A route's stages composed: generate -> filters/scorers -> picker, with the repair loop.

Stage roles: filters (sound checks) drop candidates, scorers attach scores,
and at most one picker, last, chooses. With only scorers the highest score
wins (earliest on ties); with no stage at all, the first candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from itsproxy.strategies.adaptive.draw import AdaptiveDraw
from itsproxy.strategies.extract import Extractor, extract_answers
from itsproxy.strategies.generate import GenerateSpec, draw, parse_generate
from itsproxy.strategies.ports import Filter, Picker, RunContext, Scorer, Stage
from itsproxy.strategies.repair import RepairSpec, backprompt, parse_repair
from itsproxy.strategies.search import steps_run
from itsproxy.strategies.search import strings_run as search_run
from itsproxy.strategies.stages.check import CheckStage
from itsproxy.strategies.stages.judge import JudgeStage
from itsproxy.strategies.stages.reward import RewardStage
from itsproxy.strategies.stages.usc import UscStage
from itsproxy.strategies.stages.vote import VoteStage
from itsproxy.strategies.types import Candidate, Degraded, RepairRound, RepairStop, Selection, SpecError

__all__ = ["NotEnoughCandidates", "Pipeline", "RunContext", "Unverified", "build_pipeline"]


class NotEnoughCandidates(Exception):
    """Fewer candidates than the route's min_candidates could be drawn."""

    def __init__(self, got: int, need: int, errors: list[BaseException]) -> None:
        super().__init__(f"only {got} of the required {need} candidates could be drawn")
        self.got, self.need, self.errors = got, need, errors


class NoAnswer(Exception):
    """The selector had nothing to select on and the route says on_no_answer: error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unverified(Exception):
    """No candidate passed the hard checks and the route says on_unverified: error."""

    def __init__(self, selection: Selection, critiques: list[str]) -> None:
        super().__init__("no candidate passed the checks")
        self.selection, self.critiques = selection, critiques


def _stage_builders() -> dict[str, Callable[[Any, str], Stage]]:
    return {"vote": VoteStage.build, "check": CheckStage.build, "judge": JudgeStage.build,
            "reward": RewardStage.build, "usc": UscStage.build}


@dataclass
class Pipeline:
    generate: GenerateSpec
    stages: list[Stage]
    extractor: Extractor | None
    repair: RepairSpec | None = None
    on_unverified: str = "error"
    min_candidates: int = 1
    on_no_answer: str = "first"  # first | passthrough | error: when the selector has nothing to select on

    @property
    def filters(self) -> list[Filter]:
        return [s for s in self.stages if s.role == "filter"]

    @property
    def scorers(self) -> list[Scorer]:
        return [s for s in self.stages if s.role == "scorer"]

    @property
    def picker(self) -> Picker | None:
        return next((s for s in self.stages if s.role == "picker"), None)

    @property
    def strategy(self) -> str:
        return "+".join(s.name for s in self.stages) or "first"

    def extract(self, candidates: list[Candidate]) -> None:
        extract_answers(self.extractor, candidates)

    async def run(self, ctx: RunContext) -> Selection:
        why = self.extractor.inapplicable(ctx.messages) if self.extractor is not None else None
        if why is not None:  # known before drawing: one call's cost, not n
            return await self._single(ctx, why)
        candidates, rounds = await self._draw_and_check(ctx)
        hard = bool(self.filters)
        pool = [c for c in candidates if c.verified] if hard else candidates
        if hard and not pool:
            if self.on_unverified == "error":
                sel = Selection(None, candidates, self.strategy, verified=False, rounds=rounds, steps=ctx.steps)
                if self.generate.search is not None:
                    await search_run.learn(ctx, self.generate.search, sel)
                raise Unverified(sel, _critiques(candidates))
            pool = candidates
        selection = await self._choose(ctx, pool, candidates)
        if self.generate.search is not None:
            await search_run.learn(ctx, self.generate.search, selection)
        selection.rounds = rounds
        selection.stop = ctx.stop
        selection.steps = ctx.steps
        selection.degraded = ctx.degraded
        if hard:
            selection.verified = bool(selection.winner and selection.winner.verified)
        return selection

    async def _single(self, ctx: RunContext, why: str) -> Selection:
        """One candidate, when nothing could be selected among n: through the route's generation
        (`first`), or as the client sent it (`passthrough`); `error` refuses."""
        if self.on_no_answer == "error":
            raise NoAnswer(why)
        if self.on_no_answer == "passthrough":
            model = self.generate.pool[0].model
            samples = await ctx.sampler.sample(ctx.messages, model=model, n=1, params=ctx.params)
            batch = [Candidate(index=0, sample=samples[0])]
        else:
            batch, errors = await draw(ctx.sampler, self.generate, ctx.messages, ctx.params, n=1, start_index=0,
                                       round=0, seed=ctx.seed, phase="generate")
            self._enough(batch, errors, 1)
        fallback = {"reason": why, "action": self.on_no_answer}
        return Selection(batch[0], batch, self.strategy, reasons=[f"{why}: drew one candidate"], fallback=fallback)

    async def _draw_and_check(self, ctx: RunContext) -> tuple[list[Candidate], list[RepairRound]]:
        candidates: list[Candidate] = []
        rounds: list[RepairRound] = []
        messages = ctx.messages
        max_rounds = self.repair.rounds if (self.repair and self.filters) else 0
        for rnd in range(max_rounds + 1):
            if rnd == 0 and self.generate.adaptive is not None:
                batch = await self._draw_adaptive(ctx, messages)  # checks as it goes
            else:
                batch = await self._draw(ctx, messages, rnd, len(candidates))
                for stage in self.filters:
                    await stage.apply(ctx, batch)
            candidates += batch
            if not self.filters or any(c.verified for c in batch) or rnd == max_rounds:
                break
            cap = ctx.spend_cap_reached(candidates)
            if cap is not None:  # no more repair rounds: decide with what is there, and say so
                ctx.stop = RepairStop(reason=cap, drawn=len(candidates), rounds=rnd)
                break
            assert self.repair is not None  # max_rounds > 0
            messages, shown, critiques = backprompt(self.repair, ctx.messages, batch)
            rounds.append(RepairRound(rnd + 1, [c.index for c in batch], shown, critiques))
        return candidates, rounds

    async def _plan_strings(self, ctx: RunContext, n: int) -> list[int] | None:
        if self.generate.search is None:
            return None
        counts, _ = await search_run.plan(ctx, self.generate.search, n)
        return counts

    async def _draw_adaptive(self, ctx: RunContext, messages: list[dict[str, Any]]) -> list[Candidate]:
        assert self.generate.adaptive is not None
        counts = await self._plan_strings(ctx, ctx.n)
        drawn = await AdaptiveDraw(self.generate, self.extractor, self.filters, self.scorers, ctx,
                                   self.generate.adaptive, messages, counts).run()
        ctx.stop = drawn.stop(ctx.n)
        self._enough(drawn.candidates, drawn.errors, ctx.n)
        # Measured against the draws started, not max_n: an adaptive early stop is no degradation.
        ctx.degraded = degraded(drawn.attempted, drawn.candidates, drawn.errors)
        return drawn.candidates

    def _enough(self, batch: list[Candidate], errors: list[BaseException], n: int) -> None:
        if len(batch) < min(self.min_candidates, n) or (not batch and errors):
            raise NotEnoughCandidates(len(batch), self.min_candidates, errors)

    async def _draw(self, ctx: RunContext, messages: list[dict[str, Any]], rnd: int, start: int) -> list[Candidate]:
        if rnd == 0 and self.generate.steps is not None:
            batch, errors = await steps_run.search(ctx, self.generate, self.generate.steps, self.extractor)
            self._enough(batch, errors, 1)
            self.extract(batch)
            return batch
        n = ctx.n if rnd == 0 or not self.repair or not self.repair.n else self.repair.n
        counts = await self._plan_strings(ctx, n) if rnd == 0 else None
        batch, errors = await draw(ctx.sampler, self.generate, messages, ctx.params, n=n, start_index=start,
                                   round=rnd, seed=ctx.seed, phase="generate" if rnd == 0 else "repair",
                                   augment_counts=counts)
        if rnd == 0:
            self._enough(batch, errors, n)
            ctx.degraded = degraded(n, batch, errors)
        # A failed repair round is not fatal: the earlier rounds' candidates still stand.
        self.extract(batch)
        return batch

    async def _choose(self, ctx: RunContext, pool: list[Candidate], everyone: list[Candidate]) -> Selection:
        # With hard checks present, scorers see every candidate, so where a judge and a
        # checker disagree (in either direction) it is on record.
        scored = everyone if self.filters else pool
        for stage in self.scorers:  # candidates scored while drawing (adaptive) are not scored again
            await stage.apply(ctx, [c for c in scored if stage.name not in c.scores])
        selection = await self._pick(ctx, pool, everyone)
        if self.filters:
            selection.disagreements = count_disagreements(scored)
        return selection

    async def _pick(self, ctx: RunContext, pool: list[Candidate], everyone: list[Candidate]) -> Selection:
        picker = self.picker
        if picker is not None:
            tally = await picker.pick(ctx, pool)
            winner = tally.winner
            reasons = (["tie broken by earliest candidate"] if tally.tie else []) + tally.reasons
            fallback = None
            if winner is None:  # nobody had an extractable answer: the route decides, and says so
                if self.on_no_answer == "error":
                    raise NoAnswer("no candidate had an extractable answer")
                winner, reasons = pool[0], ["no candidate had an extractable answer; returned the first"]
                fallback = {"reason": "no_extractable_answer", "action": "first"}
            return Selection(winner, everyone, self.strategy, votes=tally.votes, tie=tally.tie, reasons=reasons,
                             agreement=tally.agreement, fallback=fallback)
        if self.scorers:
            scored = [c for c in pool if "score" in c.scores]
            if not scored:
                return Selection(pool[0], everyone, self.strategy,
                                 reasons=["no candidate could be scored; returned the first"])
            winner = max(scored, key=lambda c: (c.scores["score"], -c.index))
            return Selection(winner, everyone, self.strategy, reasons=["highest score"])
        return Selection(pool[0], everyone, self.strategy, reasons=["first successful candidate"])


def count_disagreements(candidates: list[Candidate]) -> int:
    """Candidates a judge (score >= 0.5 means it approved) and the hard checks judged differently."""
    n = 0
    for c in candidates:
        if "judge" in c.scores and c.hard_verdicts:
            if (c.scores["judge"] >= 0.5) != c.verified:
                c.notes.append("judge and checker disagree")
                n += 1
    return n


def _critiques(candidates: list[Candidate]) -> list[str]:
    out: list[str] = []
    for c in candidates:
        out += [f"candidate {c.index}: {v.checker}: {v.critique}" for v in c.verdicts if v.hard and not v.passed]
    return out


def build_pipeline(route: dict[str, Any], path: str, models: set[str]) -> Pipeline:
    spec = parse_generate(route.get("generate") or {}, f"{path}.generate", models)
    select = route.get("select") or []
    if not isinstance(select, list):
        raise SpecError(f"{path}.select", "must be a list of single-key stages")
    builders = _stage_builders()
    stages: list[Stage] = []
    for i, item in enumerate(select):
        p = f"{path}.select[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise SpecError(p, f"each stage is a single-key mapping, one of: {', '.join(builders)}")
        (kind, body), = item.items()
        if kind not in builders:
            raise SpecError(f"{p}.{kind}", f"unknown stage; one of: {', '.join(builders)}")
        stages.append(builders[kind](body, f"{p}.{kind}"))
    pickers = [i for i, s in enumerate(stages) if s.role == "picker"]
    if len(pickers) > 1 or (pickers and pickers[0] != len(stages) - 1):
        raise SpecError(f"{path}.select", "at most one picker (vote, usc), and it must be the last stage")
    extractor = next((s.extractor for s in stages if s.role == "picker"), None)
    for s in stages:  # a check stage without its own extractor takes the vote's
        if s.role == "filter" and s.extractor is None:
            s.extractor = extractor
    on_unverified = route.get("on_unverified", "error")
    if on_unverified not in ("error", "best_effort"):
        raise SpecError(f"{path}.on_unverified", "must be error or best_effort")
    min_c = route.get("min_candidates", 1)
    if isinstance(min_c, bool) or not isinstance(min_c, int) or min_c < 1:
        raise SpecError(f"{path}.min_candidates", "must be an integer >= 1")
    on_no_answer = route.get("on_no_answer", "first")
    if on_no_answer not in ("first", "passthrough", "error"):
        raise SpecError(f"{path}.on_no_answer", "must be first, passthrough or error")
    _check_adaptive(spec, stages, extractor, path)
    repair = parse_repair(route.get("repair"), f"{path}.repair")
    if repair and not any(s.role == "filter" for s in stages):
        raise SpecError(f"{path}.repair", "needs a check stage: repair back-prompts with the checkers' critiques")
    return Pipeline(spec, stages, extractor, repair, on_unverified, min_c, on_no_answer)


def _check_adaptive(spec: GenerateSpec, stages: list[Stage], extractor: Extractor | None, path: str) -> None:
    """An adaptive rule needs something to decide on: votes, hard checks, or pointwise scores."""
    if spec.adaptive is None or extractor is not None or any(s.role == "filter" for s in stages):
        return
    scorers = [s for s in stages if s.role == "scorer"]
    if not scorers:
        raise SpecError(f"{path}.generate.adaptive", "needs a vote, a check, or a pointwise judge/reward to decide on")
    if not all(s.incremental for s in scorers):
        raise SpecError(f"{path}.generate.adaptive", "over scores needs pointwise scorers (a pairwise "
                        "tournament cannot score batches as they arrive)")


def degraded(requested: int, batch: list[Candidate], errors: list[BaseException]) -> Degraded | None:
    """What fell short of the requested draw, or None when every requested candidate came back."""
    if len(batch) >= requested and not errors:
        return None
    why = (f"{len(errors)} upstream call(s) failed" if errors
           else "the upstream returned fewer choices than asked for")
    return Degraded(requested=requested, drawn=len(batch), failed=len(errors), why=why)
