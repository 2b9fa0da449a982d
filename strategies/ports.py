"""Everything a strategy may use from the proxy, as typed ports.

Strategies import nothing from `itsproxy.proxy`: the proxy implements these
protocols (`proxy/upstream/sampler.py`, `proxy/upstream/endpoints.py`, the
ledger, the search store) and hands them over in a `RunContext`. Tests hand
over fakes (`tests/fakes.py`), so pipeline logic runs without HTTP.

A stage is one of three kinds, told apart by its `role`: a `Filter` (sound
checks; drops candidates), a `Scorer` (attaches scores) or a `Picker` (chooses).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from itsproxy.strategies.extract import Extractor
from itsproxy.strategies.search.strings import ArmStats
from itsproxy.strategies.types import Candidate, Degraded, Sample, StepsEvidence, Stop, Tally

# ---------------------------------------------------------------- model calls


class Sampler(Protocol):
    """Draws completions for one request; bound to its ledger and deadline.

    Raises `SampleError` only when no choice at all could be had; a partial
    batch is returned as what it is. Every call is metered by the proxy.
    """

    async def sample(self, messages: list[dict[str, Any]], *, model: str, n: int = 1, phase: str = "generate",
                     params: dict[str, Any] | None = None) -> list[Sample]: ...

    async def sample_streaming(self, messages: list[dict[str, Any]], *, model: str, phase: str = "generate",
                               params: dict[str, Any] | None = None) -> Sample:
        """One candidate over a streaming call: cancelling the caller stops upstream decoding."""
        ...

    def stream_choices(self, messages: list[dict[str, Any]], *, model: str, n: int, phase: str = "generate",
                       params: dict[str, Any] | None = None) -> AsyncGenerator[Sample, None]:
        """One streaming call with `n`: each choice as soon as it finishes; `aclose()` stops the rest."""
        ...


class EndpointError(Exception):
    """A metered endpoint call failed (transport, timeout, HTTP status, not a JSON object).

    The message says what happened in words safe to show a client (no response body).
    """


class MeteredHttp(Protocol):
    """Calls to non-chat endpoints a route's config names (reward models).

    The proxy does the HTTP and records the call in the request's ledger under
    `phase` and `model`, with the usage the endpoint reports and the proxy's pricing.
    """

    async def post_json(self, url: str, body: dict[str, Any], *, phase: str, model: str,
                        headers: dict[str, str] | None = None, timeout: float) -> dict[str, Any]: ...


# ---------------------------------------------------------------- spend and state


class TokenTotal(Protocol):
    @property
    def total_tokens(self) -> int: ...


class SpendTracker(Protocol):
    """What the request has spent so far (the proxy's ledger)."""

    def total(self) -> TokenTotal: ...

    def cost_usd(self) -> float | None:
        """None when some call that spent tokens has no known price."""
        ...


class SearchStore(Protocol):
    """Where the augmenting-string bandit keeps its per-arm totals."""

    @property
    def path(self) -> str: ...

    def next_seed(self) -> int: ...

    async def load(self, route: str, arms: list[str]) -> list[ArmStats]: ...

    async def record(self, route: str, arms: list[str], updates: dict[int, tuple[int, float]]) -> None: ...


class SearchStores(Protocol):
    def get(self, path: str | None = None) -> SearchStore:
        """The store at `path` (a route's own file), or the default one."""
        ...


# ---------------------------------------------------------------- the request


@dataclass
class RunContext:
    """One request's view, as the strategies see it: its data and its ports."""

    messages: list[dict[str, Any]]
    params: dict[str, Any]  # the client's forwarded parameters (n/temperature already removed)
    sampler: Sampler
    n: int
    route: str
    seed: int | None = None
    spend: SpendTracker | None = None  # the request's ledger; None: no spend caps apply
    http: MeteredHttp | None = None  # endpoint calls (reward models); None: such stages fail with a note
    search_stores: SearchStores | None = None  # None: the search allocates but learns nothing
    max_extra_tokens: int | None = None  # the route's per-request spend caps
    max_cost_usd: float | None = None
    stop: Stop | None = None  # set while drawing; copied into the Selection
    degraded: Degraded | None = None  # set while drawing; copied into the Selection
    search: dict[str, Any] | None = None  # set by the search's plan; copied into the Selection
    steps: StepsEvidence | None = None  # set by a search over steps; copied into the Selection

    def spend_cap_reached(self, candidates: list[Candidate]) -> str | None:
        """Which per-request cap the spend so far has reached, if any.

        Extra tokens so far = everything spent minus the dearest candidate's own
        tokens (whichever wins, at least that much was extra): a lower bound, so
        a cap only stops drawing once it is surely reached.
        """
        if self.spend is None:
            return None
        if self.max_extra_tokens is not None:
            own = max((c.sample.prompt_tokens + c.sample.completion_tokens for c in candidates), default=0)
            if self.spend.total().total_tokens - own >= self.max_extra_tokens:
                return "max_extra_tokens"
        if self.max_cost_usd is not None:
            cost = self.spend.cost_usd()
            if cost is not None and cost >= self.max_cost_usd:
                return "max_cost_usd"
        return None


# ---------------------------------------------------------------- stages


class StageBase(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def models(self) -> list[str]:
        """model_list names this stage calls (checked against model_list at config load)."""
        ...

    @property
    def model_path(self) -> str | None:
        """The config key path naming those models, for error messages."""
        ...

    async def aclose(self) -> None:
        """Release clients and processes the stage holds (called when the config is retired)."""
        ...


class Filter(StageBase, Protocol):
    """Runs sound checks: a candidate is verified only if every hard verdict passed."""

    @property
    def role(self) -> Literal["filter"]: ...

    extractor: Extractor | None  # the answer it checks; the pipeline gives it the picker's when unset

    async def apply(self, ctx: RunContext, candidates: list[Candidate]) -> None: ...


class Scorer(StageBase, Protocol):
    """Writes `scores[name]` and `scores["score"]` in [0, 1] (or removes `score`, with a note)."""

    @property
    def role(self) -> Literal["scorer"]: ...

    @property
    def incremental(self) -> bool:
        """True when each candidate's score stands alone (batches can be scored as they arrive)."""
        ...

    async def apply(self, ctx: RunContext, candidates: list[Candidate]) -> None: ...


class Picker(StageBase, Protocol):
    """Chooses among the candidates; always the last stage."""

    @property
    def role(self) -> Literal["picker"]: ...

    @property
    def extractor(self) -> Extractor | None:
        """The answers it compares (a vote's); None for free-form pickers."""
        ...

    async def pick(self, ctx: RunContext, candidates: list[Candidate]) -> Tally: ...


Stage = Filter | Scorer | Picker
