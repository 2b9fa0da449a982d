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
from dataclasses import dataclass, field
from typing import Any

from itsproxy.strategies.generate import GenerateSpec, derive_seed, member_params
from itsproxy.strategies.ports import RunContext
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
    score: float = 0.0


class StepSearch:
    """One request's search: its tree, its calls, its chains."""

    def __init__(self, ctx: RunContext, gen: GenerateSpec, spec: StepsSpec) -> None:
        self.ctx, self.gen, self.spec = ctx, gen, spec
        self.model = gen.pool[0].model
        self.root = Node(text="")
        self.root_text = self._root_text()
        self.chains: list[Chain] = []
        self.calls = 0
        self.errors: list[BaseException] = []
        self.stopped: str | None = None

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
        for s in samples:
            node.children.append(self._child(node, s))
        if self.spec.reward is not None and node.children:
            scores = await self._rewards(["".join(n.text for n in ch.path()) for ch in node.children])
            for ch, score in zip(node.children, scores):
                ch.score = score
        if not node.children:
            node.terminal = True
        return node.children

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
        else:
            try:
                sample = (await self._call(node, 1, finish=True))[0]
            except Exception as exc:  # noqa: BLE001 - the search goes on with what it has
                self.errors.append(exc)
                return None
            entries = list((sample.logprobs or {}).get("content") or [])
            scores = [v for part in split_steps(entries, self.spec.delimiter) if (v := confidence(part)) is not None]
            if self.spec.reward is not None:
                whole = "".join(n.text for n in node.path()) + sample.text
                scores = [v for v in await self._rewards([whole]) if v is not None]
            chain = Chain(node, sample.text, scores, entries, sample.completion_tokens, sample.call_id)
        chain.score = path_score(node, self.spec.aggregate, chain.tail_scores)
        self.chains.append(chain)
        return chain

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

    # ------------------------------------------------------------ methods

    async def beam(self) -> None:
        beams = [self.root]
        for _ in range(self.spec.max_depth):
            if self._cap():
                break
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
        """The complete chains, best path score first (the earliest on ties)."""
        ranked = sorted(enumerate(self.chains), key=lambda p: (-p[1].score, p[0]))
        return [Candidate(index=i, sample=self._sample(chain), scores={"steps": chain.score})
                for i, (_, chain) in enumerate(ranked)]

    def _sample(self, chain: Chain) -> Sample:
        path = chain.node.path()
        text = cut_at_stop("".join(n.text for n in path) + chain.tail, self.ctx.params.get("stop"))
        entries = [e for n in path for e in n.entries] + chain.tail_entries
        first = path[0] if path else None
        return Sample({"role": "assistant", "content": text}, "stop", self.model, chain.call_id,
                      prompt_tokens=first.prompt_tokens if first else 0,
                      completion_tokens=sum(n.completion_tokens for n in path) + chain.tail_tokens,
                      logprobs={"content": entries} if self.ctx.params.get("logprobs") else None)

    def evidence(self) -> StepsEvidence:
        best = max(self.chains, key=lambda c: c.score, default=None)
        scores = (best.node.step_scores() + best.tail_scores) if best else []
        stopped = self.stopped or (f"{len(self.errors)} failed calls" if self.errors and not self.chains else None)
        return StepsEvidence(self.spec.method, self.calls, count_nodes(self.root), max_depth(self.root),
                             len(self.chains), scores, best.score if best else None, stopped, len(self.errors))


def cut_at_stop(text: str, stop: Any) -> str:
    """The client's own `stop` applies to the answer it gets (the search's calls use the delimiter)."""
    stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str) and s]
    cuts = [text.find(s) for s in stops if s in text]
    return text[:min(cuts)] if cuts else text


async def search(ctx: RunContext, gen: GenerateSpec, spec: StepsSpec) -> tuple[list[Candidate], list[BaseException]]:
    """Run the route's search; the complete chains as candidates, and the calls that failed."""
    run = StepSearch(ctx, gen, spec)
    await (run.beam() if spec.method == "beam" else run.mcts())
    ctx.steps = run.evidence()
    return run.candidates(), run.errors
