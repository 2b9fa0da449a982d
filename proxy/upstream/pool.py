"""What the app holds for calling models: the backends, the global concurrency cap,
the deployments' balancer, prices, and what it has learned about each model's `n`.
`bind()` gives each request its `RequestSampler` (proxy/upstream/sampler.py)."""

from __future__ import annotations

import asyncio

from itsproxy.proxy.config import Config, Deployment, ModelEntry
from itsproxy.proxy.metering.ledger import Ledger
from itsproxy.proxy.metering.limits import RateLimits
from itsproxy.proxy.metering.pricing import Prices, prices_for
from itsproxy.proxy.metering.tokens import warm as warm_tokenizer
from itsproxy.proxy.upstream.backends.base import Backend, UpstreamBusy, UpstreamError
from itsproxy.proxy.upstream.backends.direct import DirectBackend, direct_capable
from itsproxy.proxy.upstream.deployments import Balancer, Lease, NoDeployment
from itsproxy.proxy.upstream.endpoints import Endpoints
from itsproxy.proxy.upstream.retry import RetryPolicy
from itsproxy.proxy.upstream.sampler import RequestSampler


class Upstream:
    def __init__(self, config: Config, limits: RateLimits | None = None) -> None:
        self.config = config
        self.models = config.models
        server = config.server
        self.direct = DirectBackend(max_connections=max(64, server.max_upstream_concurrency),
                                    retry=RetryPolicy(server.num_retries),
                                    max_body_bytes=server.max_upstream_body_bytes)
        self._litellm: Backend | None = None
        deployments = [d for m in self.models.values() for d in m.deployments]
        if server.upstream_client == "litellm" or not all(direct_capable(d) for d in deployments):
            self._litellm = self._make_litellm()
        self.semaphore = asyncio.Semaphore(server.max_upstream_concurrency)
        self.balancer = Balancer(config.router, limits=limits)
        # model name -> True (n works), False (n refused: fan out). Seeded from model_info.supports_n.
        self.n_support: dict[str, bool] = {k: m.supports_n for k, m in self.models.items() if m.supports_n is not None}
        # Slow first uses happen here, at startup, never inside a request (they would block the event loop):
        # the tokenizer (~0.4 s; it splits n-call usage across choices and counts missing usage), and
        # the cost map (read only for models whose prices model_list does not set).
        warm_tokenizer()
        self.prices = {name: prices_for(entry) for name, entry in self.models.items()}
        self.endpoints = Endpoints(self.prices)  # reward endpoints: metered like model calls

    def _make_litellm(self) -> Backend:
        from itsproxy.proxy.upstream.backends.via_litellm import LitellmBackend

        return LitellmBackend(RetryPolicy(self.config.server.num_retries))

    def backend(self, target: Deployment) -> Backend:
        if self.config.server.upstream_client == "auto" and direct_capable(target):
            return self.direct
        assert self._litellm is not None
        return self._litellm

    def entry(self, name: str) -> ModelEntry:
        """A model_list name, or a name a wildcard entry (`openai/*`) serves."""
        entry = self.config.model(name)
        if entry is None:
            raise UpstreamError(f"no model_list entry serves {name!r}", 404)
        return entry

    def price(self, entry: ModelEntry) -> Prices:
        # Wildcard-served names are priced on use (the cost map is already in memory: read at startup).
        return self.prices.get(entry.name) or prices_for(entry)

    async def lease(self, entry: ModelEntry, tried: list[str], last: UpstreamError | None) -> Lease:
        """A deployment for one call; when none is free, the last failure (after a failover)
        or a 429 saying when one frees up."""
        try:
            return await self.balancer.acquire(entry, tried)
        except NoDeployment as exc:
            if last is not None:
                raise last from None
            raise UpstreamError(str(exc), 429, code="no_deployment_available",
                                retry_after=exc.retry_after_s) from None

    def bind(self, ledger: Ledger, deadline: float | None = None) -> RequestSampler:
        """`deadline` (event-loop time): retries and their Retry-After waits stay within it."""
        return RequestSampler(self, ledger, deadline)

    async def aclose(self) -> None:
        await self.endpoints.aclose()
        await self.direct.aclose()
        if self._litellm is not None:
            await self._litellm.aclose()

    async def slot(self) -> None:
        if not self.semaphore.locked():  # a free slot: taken at once, no timeout task needed
            await self.semaphore.acquire()
            return
        try:
            await asyncio.wait_for(self.semaphore.acquire(), self.config.server.upstream_queue_timeout_s)
        except TimeoutError:
            raise UpstreamBusy("the proxy is at its upstream concurrency limit; try again shortly", 503) from None
