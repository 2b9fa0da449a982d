"""In-memory implementations of the strategy ports (`itsproxy.strategies.ports`).

They let pipeline logic run without HTTP: a `FakeSampler` answers from a
script (a function of the call), records every call, and reports token counts
the way the proxy's sampler does; a `FakeSpend` is a ledger stand-in for the
spend caps. Not a mock of our code path: the pipeline under test is the real one,
and only the port it talks through is replaced.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from itsproxy.strategies.ports import MeteredHttp, RunContext, Sampler, SpendTracker
from itsproxy.strategies.types import Sample, SampleError


@dataclass
class Call:
    """One call the pipeline made through the fake sampler."""

    messages: list[dict[str, Any]]
    model: str
    n: int
    phase: str
    params: dict[str, Any]


# script(call, i) -> the reply text of the call's i-th choice, or an exception to raise (no choice at all)
Script = Callable[[Call, int], "str | SampleError"]


@dataclass
class Totals:
    total_tokens: int = 0


@dataclass
class FakeSpend:
    """The request's spend so far: what the sampler's calls cost."""

    tokens: int = 0
    cost: float | None = 0.0

    def total(self) -> Totals:
        return Totals(self.tokens)

    def cost_usd(self) -> float | None:
        return self.cost


@dataclass
class FakeSampler:
    script: Script
    prompt_tokens: int = 10
    completion_tokens: int = 5  # per choice
    usd_per_token: float = 0.0
    spend: FakeSpend = field(default_factory=FakeSpend)
    calls: list[Call] = field(default_factory=list)
    logprobs: Callable[[Call, str], dict[str, Any] | None] | None = None  # (call, reply) -> chat-shaped logprobs

    def _call(self, messages: list[dict[str, Any]], model: str, n: int, phase: str,
              params: dict[str, Any] | None) -> list[Sample]:
        call = Call(messages, model, n, phase, dict(params or {}))
        self.calls.append(call)
        replies = [self.script(call, i) for i in range(n)]
        error = next((r for r in replies if isinstance(r, SampleError)), None)
        if error is not None:
            raise error
        spent = self.prompt_tokens + self.completion_tokens * n
        self.spend.tokens += spent
        if self.spend.cost is not None:
            self.spend.cost += spent * self.usd_per_token
        return [Sample({"role": "assistant", "content": r}, "stop", model, len(self.calls) - 1,
                       self.prompt_tokens, self.completion_tokens,
                       self.logprobs(call, r) if self.logprobs is not None else None)
                for r in replies if isinstance(r, str)]

    async def sample(self, messages: list[dict[str, Any]], *, model: str, n: int = 1, phase: str = "generate",
                     params: dict[str, Any] | None = None) -> list[Sample]:
        return self._call(messages, model, n, phase, params)

    async def sample_streaming(self, messages: list[dict[str, Any]], *, model: str, phase: str = "generate",
                               params: dict[str, Any] | None = None) -> Sample:
        return self._call(messages, model, 1, phase, params)[0]

    async def stream_choices(self, messages: list[dict[str, Any]], *, model: str, n: int, phase: str = "generate",
                             params: dict[str, Any] | None = None) -> AsyncGenerator[Sample, None]:
        for sample in self._call(messages, model, n, phase, params):
            yield sample


def context(sampler: FakeSampler, n: int, *, messages: list[dict[str, Any]] | None = None, seed: int | None = 7,
            http: MeteredHttp | None = None, **kw: Any) -> RunContext:
    """A RunContext wired to the fakes (the sampler's spend is the request's ledger)."""
    as_sampler: Sampler = sampler  # the fakes satisfy the ports (checked by mypy on this file)
    spend: SpendTracker = sampler.spend
    return RunContext(messages=messages or [{"role": "user", "content": "What is 6 * 7?"}], params={},
                      sampler=as_sampler, n=n, route="unit", seed=seed, spend=spend, http=http, **kw)
