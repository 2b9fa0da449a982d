"""The search over reasoning steps, driving the sampler (the tree logic is in `steps.py`).

Every expansion is one sampler call (phase `search`) that continues the partial answer:
the conversation plus a final assistant message holding the steps so far, which a
completion-mode model continues as raw text (or a chat model with
`continue_final_message`). An expansion asks for `expansions` choices cut at the
delimiter (`stop`) or at `max_step_tokens`; a finish or rollout call writes the rest
of the chain. Between calls the route's spend caps are checked; the deadline bounds
every call (the sampler is bound to it). The complete chains come back as candidates,
best path score first, for the route's select stages.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from typing import Any

from itsproxy.strategies.extract import Extractor
from itsproxy.strategies.generate import GenerateSpec, derive_seed, member_params
from itsproxy.strategies.ports import RunContext
from itsproxy.strategies.search.guard import (
    ProbeSteps,
    Sizes,
    Verdict,
    agreement,
    fallback_chains,
    judge_signal,
    search_tokens,
)
from itsproxy.strategies.search.steps import (
    Node,
    StepsSpec,
    backprop,
    best_beams,
    confidence,
    count_nodes,
    max_depth,
    path_score,
    select_leaf,
    split_steps,
)
from itsproxy.strategies.types import Candidate, Sample, StepsEvidence

PHASE = "search"
CHAT_CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


@dataclass
class Chain:
    """A complete chain: the node it ends at, plus a rollout's text and step scores beyond it."""

    node: Node
    tail: str = ""
    tail_scores: list[float] = field(default_factory=list)
    tail_entries: list[dict[str, Any]] = field(default_factory=list)
    tail_tokens: int = 0
    call_id: int = -1
    prompt_tokens: int = 0
    score: float = 0.0


class StepSearch:
    """One request's search: its tree, its calls, its chains."""

    def __init__(self, ctx: RunContext, gen: GenerateSpec, spec: StepsSpec, extractor: Extractor | None = None) -> None:
        self.ctx, self.gen, self.spec, self.extractor = ctx, gen, spec, extractor
        self.verdict: Verdict | None = None
        self.pruned = 0  # score: check: partial chains a checker rejected
        self.rejected = 0  # score: check: complete chains a checker rejected
        self.guard: dict[str, Any] = {}
        self.model = gen.pool[0].model
        self.root = Node(text="")
        self.root_text = self._root_text()
        self.chains: list[Chain] = []
        self.calls = 0
        self.errors: list[BaseException] = []
        self.stopped: str | None = None
        self.probes: list[Chain] = []  # the guard's probe chains: they seed the first layer

    def _root_text(self) -> str:
        """Steps start on a fresh line: the partial answer opens with the delimiter unless the
        conversation already ends with it."""
        delim = self.spec.delimiter
        last = self.ctx.messages[-1].get("content") if self.ctx.messages else ""
        if delim is None or (isinstance(last, str) and last.endswith(delim)):
            return ""
        return delim

    # ------------------------------------------------------------ calls

    def _params(self, finish: bool) -> dict[str, Any]:
        seed = None if self.ctx.seed is None else derive_seed(self.ctx.seed, "steps", self.calls)
        params = member_params(self.gen, self.gen.pool[0], self.ctx.params, seed)
        if not finish:  # a step ends at the delimiter; a chain written to the end, at the client's stop
            params.pop("stop", None)
        params |= {"logprobs": True, "top_logprobs": self.spec.top_logprobs}
        if self.spec.continuation == "chat":
            params |= CHAT_CONTINUE
        if not finish:
            if self.spec.delimiter is not None:
                params["stop"] = [self.spec.delimiter]
            if self.spec.max_step_tokens is not None:
                params["max_tokens"] = self.spec.max_step_tokens
        return params

    async def _call(self, node: Node, n: int, finish: bool) -> list[Sample]:
        messages = [*self.ctx.messages, {"role": "assistant", "content": node.partial(self.root_text)}]
        params = self._params(finish)
        self.calls += 1
        return await self.ctx.sampler.sample(messages, model=self.model, n=n, phase=PHASE, params=params)

    async def expand(self, node: Node) -> list[Node]:
        """Sample the node's children (one call); a failed call leaves it a dead end."""
        node.expanded = True
        try:
            samples = await self._call(node, self.spec.expansions, finish=False)
        except Exception as exc:  # noqa: BLE001 - one failed expansion ends a branch, not the search
            self.errors.append(exc)
            node.terminal = True
            return []
        children = [self._child(node, s) for s in samples]
        node.children = await self._score_steps(children)
        if not node.children:
            node.terminal = True
        return node.children

    async def _score_steps(self, children: list[Node]) -> list[Node]:
        """Score new steps by the configured scorer (confidence is already set); the children kept."""
        texts = ["".join(n.text for n in ch.path()) for ch in children]
        partial = [not ch.terminal for ch in children]  # a final step completes the chain
        if self.spec.reward is not None and children:
            for ch, score in zip(children, await self._rewards(texts)):
                ch.score = score
        elif self.spec.judge is not None and children:
            scores, notes = await self.spec.judge.scores(self.ctx, texts, partial)
            self._note(notes)
            for ch, score in zip(children, scores):
                ch.score = score
        elif self.spec.check is not None and children:
            passed = await self.spec.check.passes(self.ctx, texts, partial)
            self.pruned += passed.count(False)
            children = [ch for ch, ok in zip(children, passed) if ok]
        return children

    def _note(self, notes: list[str]) -> None:
        if notes:
            self.errors.append(RuntimeError("; ".join(notes)))

    def _child(self, parent: Node, s: Sample) -> Node:
        text = s.text
        entries = list((s.logprobs or {}).get("content") or [])
        terminal = not text.strip() or bool(self.spec.final_re.search(text))
        cut = s.finish_reason == "stop" and self.spec.delimiter is not None and not terminal
        if cut and not text.endswith(self.spec.delimiter or ""):
            text += self.spec.delimiter or ""  # the stop string is consumed: put it back
        return Node(text=text, parent=parent, score=confidence(entries), terminal=terminal, entries=entries,
                    completion_tokens=s.completion_tokens, prompt_tokens=s.prompt_tokens, call_id=s.call_id)

    async def finish(self, node: Node) -> Chain | None:
        """Write the rest of the chain from `node` in one call (a rollout); None if it failed."""
        if node.terminal:
            chain = Chain(node, call_id=node.call_id)
            chain.score = path_score(node, self.spec.aggregate)
            self.chains.append(chain)
            return chain
        try:
            sample = (await self._call(node, 1, finish=True))[0]
        except Exception as exc:  # noqa: BLE001 - the search goes on with what it has
            self.errors.append(exc)
            return None
        return (await self._chains(node, [sample]))[0]

    async def _chains(self, node: Node, samples: list[Sample]) -> list[Chain]:
        """Chains that end with `samples`, each written to the end from `node`, scored and kept."""
        out = []
        for sample in samples:
            entries = list((sample.logprobs or {}).get("content") or [])
            scores = [v for part in split_steps(entries, self.spec.delimiter) if (v := confidence(part)) is not None]
            scores = await self._score_chain("".join(n.text for n in node.path()) + sample.text, scores)
            chain = Chain(node, sample.text, scores, entries, sample.completion_tokens, sample.call_id,
                          prompt_tokens=sample.prompt_tokens)
            chain.score = path_score(node, self.spec.aggregate, chain.tail_scores)
            self.chains.append(chain)
            out.append(chain)
        return out

    async def _draw_chains(self, n: int) -> list[Chain]:
        """`n` independent complete chains from the root, in one call ([] if it failed)."""
        try:
            samples = await self._call(self.root, n, finish=True)
        except Exception as exc:  # noqa: BLE001 - a failed probe leaves the search to decide without it
            self.errors.append(exc)
            return []
        return await self._chains(self.root, samples)

    async def _score_chain(self, whole: str, scores: list[float]) -> list[float]:
        """A complete chain's tail scores: its confidences, or the scorer's verdict on the whole."""
        if self.spec.reward is not None:
            return [v for v in await self._rewards([whole]) if v is not None]
        if self.spec.judge is not None:
            judged, notes = await self.spec.judge.scores(self.ctx, [whole], [False])
            self._note(notes)
            return [v for v in judged if v is not None]
        if self.spec.check is not None and not (await self.spec.check.passes(self.ctx, [whole], [False]))[0]:
            self.rejected += 1
            return [0.0]  # kept as a candidate (the select stages decide), ranked below every pass
        return scores

    async def _rewards(self, texts: list[str]) -> list[float | None]:
        """The process reward of each prefix (phase `reward`); None where the endpoint failed."""
        assert self.spec.reward is not None
        cands = [Candidate(index=i, sample=Sample({"role": "assistant", "content": t}, "stop", self.model, -1))
                 for i, t in enumerate(texts)]
        await self.spec.reward.apply(self.ctx, cands)
        if any("reward" not in c.scores for c in cands):
            self.errors.append(RuntimeError("; ".join(n for c in cands for n in c.notes) or "reward failed"))
        return [c.scores.get("reward") for c in cands]

    def _cap(self) -> bool:
        cap = self.ctx.spend_cap_reached(self.candidates())
        if cap is not None:
            self.stopped = cap
        return cap is not None

    # ------------------------------------------------------------ the guard

    async def probe(self) -> bool:
        """The signal guard (guard.py): probe chains first; True when the scorer may steer the rest."""
        assert self.spec.guard is not None
        probes = await self._draw_chains(self.spec.guard.chains)
        if not probes:
            self.verdict = Verdict("search", "the probe call failed: the scorer is untested", None, 0)
            return True
        scores = [c.score if c.tail_scores else None for c in probes]
        steps = [self._probe_steps(c) for c in probes] if self._step_level() else None
        self.verdict = judge_signal(self.spec.guard, scores, [self.answer(c) for c in probes], steps)
        sizes = self._sizes(probes)
        estimate = search_tokens(self.spec.method, self.spec.width, self.spec.expansions, self.spec.max_depth,
                                 self.spec.rollouts, sizes, seeded=True)
        self.probes = probes
        self.guard = {"probes": len(probes), "estimate_tokens": round(estimate)}
        if self.verdict.decision == "sample" and not self._cap():
            more = fallback_chains(estimate, sizes, cap=64)
            self.guard["samples"] = more
            if more:
                await self._draw_chains(more)
        return self.verdict.decision == "search"

    def _step_level(self) -> bool:
        """The guard tests sibling steps where steps carry their own scores: confidence, cut at a delimiter."""
        return self.spec.score == "confidence" and self.spec.delimiter is not None

    def _probe_steps(self, chain: Chain) -> ProbeSteps:
        """A probe chain's steps, each with its text and its confidence."""
        parts = split_steps(chain.tail_entries, self.spec.delimiter)
        return [("".join(str(e.get("token") or "") for e in part), confidence(part)) for part in parts]

    def _sizes(self, probes: list[Chain]) -> Sizes:
        tokens = sum(c.tail_tokens for c in probes) / len(probes)
        if self.spec.delimiter is not None:
            steps = sum(len([p for p in c.tail.split(self.spec.delimiter) if p.strip()]) for c in probes) / len(probes)
        else:
            steps = math.ceil(tokens / (self.spec.max_step_tokens or 1))
        return Sizes(prompt=float(probes[0].prompt_tokens), chain=tokens, steps=steps)

    def answer(self, chain: Chain) -> str | None:
        """What the chain answers: the route's extractor's reading, else the text after the final line's marker."""
        text = self.text(chain)
        if self.extractor is not None:
            return self.extractor({"role": "assistant", "content": text})
        final = self.spec.final_re
        for line in reversed(text.split("\n")):
            if (m := final.search(line)) is not None:
                return re.sub(r"\s+", " ", line[m.end():]).strip(" .:").lower() or None
        return None

    def text(self, chain: Chain) -> str:
        return "".join(n.text for n in chain.node.path()) + chain.tail

    # ------------------------------------------------------------ methods

    async def run(self) -> None:
        if self.spec.guard is not None and not await self.probe():
            return
        await (self.beam() if self.spec.method == "beam" else self.mcts())

    def seed(self) -> bool:
        """The root's first layer from the probe chains' first steps (a chain that ends at its first
        step is already a candidate, not a node); MCTS also backs each probe chain up as a rollout."""
        for chain in self.probes:
            parts = split_steps(chain.tail_entries, self.spec.delimiter)
            texts = ["".join(str(e.get("token") or "") for e in part) for part in parts]
            if len(parts) < 2 or "".join(texts) != chain.tail or self.spec.final_re.search(texts[0]):
                continue
            node = Node(text=texts[0], parent=self.root, score=confidence(parts[0]), entries=parts[0],
                        completion_tokens=len(parts[0]), prompt_tokens=chain.prompt_tokens, call_id=chain.call_id)
            self.root.children.append(node)
            if self.spec.method == "mcts":
                backprop(node, chain.score)
        self.root.expanded = bool(self.root.children)
        return self.root.expanded

    async def beam(self) -> None:
        beams = [self.root]
        seeded = self.seed()
        for depth in range(self.spec.max_depth):
            if self._cap():
                break
            if not (depth == 0 and seeded):
                await asyncio.gather(*(self.expand(b) for b in beams))
            children = [ch for b in beams for ch in b.children]
            for ch in children:
                if ch.terminal:
                    await self.finish(ch)
            beams = best_beams([ch for ch in children if not ch.terminal], self.spec.width, self.spec.aggregate)
            if not beams:
                return
        if self.stopped is None:
            await asyncio.gather(*(self.finish(b) for b in beams))
        elif not self.chains and beams:
            await self.finish(beams[0])  # a cap stopped the search before any chain ended: finish the best

    async def mcts(self) -> None:
        self.seed()
        for _ in range(self.spec.rollouts):
            if self._cap():
                break
            leaf = select_leaf(self.root, self.spec.c)
            if leaf.terminal and leaf is not self.root and leaf.visits > 0:
                backprop(leaf, path_score(leaf, self.spec.aggregate))
                continue
            if leaf.visits == 0 and leaf is not self.root:
                start = leaf  # simulate from a fresh node
            elif leaf.depth >= self.spec.max_depth:
                start = leaf
            else:
                children = await self.expand(leaf)
                if not children:
                    backprop(leaf, 0.0)
                    continue
                start = max(children, key=lambda ch: ch.score or 0.0)
            chain = await self.finish(start)
            backprop(start, chain.score if chain is not None else 0.0)
        if not self.chains and self.stopped is not None:
            await self.finish(self.root)

    # ------------------------------------------------------------ results

    def candidates(self) -> list[Candidate]:
        """The complete chains, best path score first (the earliest on ties); when the guard did not
        trust the scorer, the most agreed-with answers first (a vote)."""
        if self.verdict is not None and self.verdict.decision != "search":
            agree = agreement([self.answer(c) for c in self.chains])
            ranked = sorted(enumerate(self.chains), key=lambda p: (-agree[p[0]], -p[1].score, p[0]))
        else:
            ranked = sorted(enumerate(self.chains), key=lambda p: (-p[1].score, p[0]))
        return [Candidate(index=i, sample=self._sample(chain), scores={"steps": chain.score})
                for i, (_, chain) in enumerate(ranked)]

    def _sample(self, chain: Chain) -> Sample:
        path = chain.node.path()
        text = cut_at_stop(self.text(chain), self.ctx.params.get("stop"))
        entries = [e for n in path for e in n.entries] + chain.tail_entries
        first = path[0] if path else None
        return Sample({"role": "assistant", "content": text}, "stop", self.model, chain.call_id,
                      prompt_tokens=first.prompt_tokens if first else chain.prompt_tokens,
                      completion_tokens=sum(n.completion_tokens for n in path) + chain.tail_tokens,
                      logprobs={"content": entries} if self.ctx.params.get("logprobs") else None)

    def evidence(self) -> StepsEvidence:
        best = max(self.chains, key=lambda c: c.score, default=None)
        scores = (best.node.step_scores() + best.tail_scores) if best else []
        stopped = self.stopped or (f"{len(self.errors)} failed calls" if self.errors and not self.chains else None)
        guard = {**self.verdict.as_dict(), **self.guard} if self.verdict is not None else None
        return StepsEvidence(self.spec.method, self.calls, count_nodes(self.root), max_depth(self.root),
                             len(self.chains), scores, best.score if best else None, stopped, len(self.errors), guard,
                             self.spec.score, self.pruned, self.rejected)


def cut_at_stop(text: str, stop: Any) -> str:
    """The client's own `stop` applies to the answer it gets (the search's calls use the delimiter)."""
    stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str) and s]
    cuts = [text.find(s) for s in stops if s in text]
    return text[:min(cuts)] if cuts else text


async def search(ctx: RunContext, gen: GenerateSpec, spec: StepsSpec,
                 extractor: Extractor | None = None) -> tuple[list[Candidate], list[BaseException]]:
    """Run the route's search; the complete chains as candidates, and the calls that failed."""
    run = StepSearch(ctx, gen, spec, extractor)
    await run.run()
    ctx.steps = run.evidence()
    return run.candidates(), run.errors
