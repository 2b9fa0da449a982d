"""The one interface through which every model call goes.

`Upstream` (one per app) owns the backends, the global concurrency cap and
what it has learned about each model's `n`. `bind()` gives a request its
`Sampler`: every call it makes is recorded in that request's ledger.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

from itsproxy.proxy.config import Config, ModelEntry
from itsproxy.proxy.metering.ledger import CallRecord, Ledger
from itsproxy.proxy.metering.pricing import prices_for
from itsproxy.proxy.metering.tokens import count_message, count_messages
from itsproxy.proxy.metering.tokens import warm as warm_tokenizer
from itsproxy.proxy.upstream.backends.base import Backend, UpstreamBusy, UpstreamError
from itsproxy.proxy.upstream.backends.direct import DirectBackend, direct_capable
from itsproxy.proxy.upstream.endpoints import Endpoints
from itsproxy.proxy.upstream.stream_tally import ChoiceTally, StreamedMessage
from itsproxy.strategies.generate import derive_seed
from itsproxy.strategies.types import Sample


class Upstream:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.models = config.models
        server = config.server
        self.direct = DirectBackend(max_connections=max(64, server.max_upstream_concurrency),
                                    num_retries=server.num_retries)
        self._litellm: Backend | None = None
        if server.upstream_client == "litellm" or not all(direct_capable(m) for m in self.models.values()):
            self._litellm = self._make_litellm()
        self.semaphore = asyncio.Semaphore(server.max_upstream_concurrency)
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

        return LitellmBackend(self.config.server.num_retries)

    def backend(self, entry: ModelEntry) -> Backend:
        if self.config.server.upstream_client == "auto" and direct_capable(entry):
            return self.direct
        assert self._litellm is not None
        return self._litellm

    def bind(self, ledger: Ledger) -> RequestSampler:
        return RequestSampler(self, ledger)

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


def split_completion(total: int, messages: list[dict[str, Any]]) -> list[int]:
    """Share one call's completion tokens across its choices by their tiktoken counts, exactly."""
    if len(messages) <= 1 or total == 0:  # nothing to split: the same shares, without tokenizing
        return [total] * len(messages)
    counts = [count_message(m) for m in messages]
    if not counts:
        return []
    weight = sum(counts)
    if weight == 0:
        counts, weight = [1] * len(counts), len(counts)
    exact = [total * c / weight for c in counts]
    shares = [int(x) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


class RequestSampler:
    """A request's view of the upstream: implements `itsproxy.strategies.ports.Sampler`."""

    def __init__(self, upstream: Upstream, ledger: Ledger) -> None:
        self.up = upstream
        self.ledger = ledger

    def entry(self, model: str) -> ModelEntry:
        return self.up.models[model]

    def timeout(self) -> float:
        return self.up.config.server.upstream_timeout_s

    async def call(self, entry: ModelEntry, body: dict[str, Any], phase: str) -> tuple[dict[str, Any], CallRecord]:
        """One non-streaming call, metered."""
        record = self.ledger.open(phase, entry.name)
        started = time.monotonic()
        await self.up.slot()
        try:
            resp = await self.up.backend(entry).complete(entry, body, self.timeout())
        except asyncio.CancelledError:
            record.outcome = "cancelled"
            raise
        except UpstreamError:
            record.outcome = "error"
            raise
        finally:
            self.up.semaphore.release()
            record.latency_s = time.monotonic() - started
        self._meter(record, entry, body, resp)
        return resp, record

    def _meter(self, record: CallRecord, entry: ModelEntry, body: dict[str, Any], resp: dict[str, Any]) -> None:
        usage = resp.get("usage") or None
        messages = [c.get("message") or {} for c in resp.get("choices") or []]
        record.choices = len(messages)
        if usage and usage.get("prompt_tokens") is not None:
            record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            record.completion_tokens = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details") or {}
            record.cached_tokens = int(details.get("cached_tokens") or 0)
        else:  # the upstream gave no usage: count it ourselves, and say so
            record.prompt_tokens = count_messages(body.get("messages") or [], body.get("tools"))
            record.completion_tokens = sum(count_message(m) for m in messages)
            record.estimated = True
        record.cost_usd = self.up.prices[entry.name].cost(record.prompt_tokens, record.completion_tokens,
                                                           record.cached_tokens)

    async def sample(self, messages: list[dict[str, Any]], *, model: str, n: int = 1, phase: str = "generate",
                     params: dict[str, Any] | None = None) -> list[Sample]:
        """n choices from `model`: one native-n call where it works, parallel calls (or top-ups) where not."""
        entry = self.entry(model)
        body = {**(params or {}), "messages": messages}
        samples: list[Sample] = []
        last_error: UpstreamError | None = None
        if n > 1 and self.up.n_support.get(model) is not False:
            try:
                samples = await self._once(entry, {**body, "n": n}, phase)
                if len(samples) >= n:
                    self.up.n_support.setdefault(model, True)
            except UpstreamError as exc:
                if not exc.about_n:
                    raise
                self.up.n_support[model] = False
                last_error = exc
        missing = n - len(samples)
        if missing <= 0:
            return samples[:n] if len(samples) > n else samples
        seed = body.get("seed")
        calls = []
        for i in range(missing):
            one = dict(body)
            if seed is not None and (missing > 1 or samples):
                one["seed"] = derive_seed(seed, "fanout", len(samples) + i)
            calls.append(self._once(entry, one, phase))
        results = await asyncio.gather(*calls, return_exceptions=True)
        for r in results:
            if isinstance(r, asyncio.CancelledError):
                raise r
            if isinstance(r, UpstreamError):
                last_error = r
            elif isinstance(r, BaseException):
                raise r
            else:
                samples.extend(r)
        if not samples:
            raise last_error or UpstreamError("upstream returned no choices")
        return samples

    async def _once(self, entry: ModelEntry, body: dict[str, Any], phase: str) -> list[Sample]:
        resp, record = await self.call(entry, body, phase)
        choices = resp.get("choices") or []
        messages = [_message(c) for c in choices]
        shares = split_completion(record.completion_tokens, messages)
        return [
            Sample(message=m, finish_reason=c.get("finish_reason"), model=entry.name, call_id=record.id,
                   prompt_tokens=record.prompt_tokens, completion_tokens=s, logprobs=c.get("logprobs"))
            for c, m, s in zip(choices, messages, shares)
        ]

    async def sample_streaming(self, messages: list[dict[str, Any]], *, model: str, phase: str = "generate",
                               params: dict[str, Any] | None = None) -> Sample:
        """One candidate over a streaming call. Cancelling the caller closes the
        stream (an upstream like vLLM then stops decoding) and the tokens already
        produced are metered as `cancelled`."""
        entry = self.entry(model)
        record = self.ledger.open(phase, entry.name)
        body = {**(params or {}), "messages": messages, "stream_options": {"include_usage": True}}
        tally = ChoiceTally()
        chunks = self.stream(model, body, phase, record=record, tally=tally)
        try:
            async for _ in chunks:
                pass
        finally:
            await chunks.aclose()
        part = tally.parts.get(0) or StreamedMessage()
        return Sample(message=part.message(), finish_reason=part.finish_reason, model=entry.name,
                      call_id=record.id, prompt_tokens=record.prompt_tokens,
                      completion_tokens=record.completion_tokens, logprobs=part.logprobs())

    async def stream_choices(self, messages: list[dict[str, Any]], *, model: str, n: int, phase: str = "generate",
                             params: dict[str, Any] | None = None) -> AsyncGenerator[Sample, None]:
        """One streaming call with `n`: yields each choice as soon as it finishes.

        Closing the iterator closes the upstream stream; choices still decoding
        are metered as part of the call (`cancelled`). Token figures of the
        yielded samples are final once the iterator is closed.
        """
        entry = self.entry(model)
        record = self.ledger.open(phase, entry.name)
        body = {**(params or {}), "messages": messages, "n": n, "stream_options": {"include_usage": True}}
        tally = ChoiceTally()
        chunks = self.stream(model, body, phase, record=record, tally=tally)
        done: list[Sample] = []
        try:
            async for _ in chunks:
                while len(done) < len(tally.finished):
                    part = tally.parts[tally.finished[len(done)]]
                    message = part.message()
                    done.append(Sample(message=message, finish_reason=part.finish_reason, model=entry.name,
                                       call_id=record.id, completion_tokens=count_message(message),
                                       logprobs=part.logprobs()))
                    yield done[-1]
        finally:
            await chunks.aclose()
            shares = split_completion(record.completion_tokens, [d.message for d in done]) \
                if record.outcome == "ok" and len(done) == n else [d.completion_tokens for d in done]
            for sample, share in zip(done, shares):
                sample.prompt_tokens, sample.completion_tokens = record.prompt_tokens, share

    async def stream(self, model: str, body: dict[str, Any], phase: str = "generate",
                     record: CallRecord | None = None, tally: ChoiceTally | None = None,
                     ) -> AsyncGenerator[dict[str, Any], None]:
        """Streaming: yields upstream chunks, meters them when the stream ends (or is cut)."""
        entry = self.entry(model)
        record = record or self.ledger.open(phase, entry.name)
        tally = tally if tally is not None else ChoiceTally()
        started = time.monotonic()
        usage: dict[str, Any] | None = None
        answered = False  # once the upstream answered, it has read (and bills) the prompt
        await self.up.slot()
        try:
            async for chunk in self.up.backend(entry).stream(entry, body, self.timeout()):
                answered = True
                if chunk.get("usage"):
                    usage = chunk["usage"]
                tally.add(chunk)
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            record.outcome = "cancelled"
            raise
        except UpstreamError:
            record.outcome = "error"
            raise
        finally:
            self.up.semaphore.release()
            record.latency_s = time.monotonic() - started
            self._meter_stream(record, entry, body, usage, tally.messages(), answered)

    def _meter_stream(self, record: CallRecord, entry: ModelEntry, body: dict[str, Any],
                      usage: dict[str, Any] | None, messages: list[dict[str, Any]], answered: bool) -> None:
        if usage and usage.get("prompt_tokens") is not None and record.outcome == "ok":
            record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            record.completion_tokens = int(usage.get("completion_tokens") or 0)
            record.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        elif answered or record.outcome == "ok":
            record.prompt_tokens = count_messages(body.get("messages") or [], body.get("tools"))
            record.completion_tokens = sum(count_message(m) for m in messages)
            record.estimated = True
        record.choices = max(1, len(messages))
        record.cost_usd = self.up.prices[entry.name].cost(record.prompt_tokens, record.completion_tokens,
                                                           record.cached_tokens)


def _message(choice: dict[str, Any]) -> dict[str, Any]:
    m = choice.get("message") or {}
    out: dict[str, Any] = {"role": "assistant", "content": m.get("content")}
    for key in ("tool_calls", "refusal", "function_call", "audio"):
        if m.get(key):
            out[key] = m[key]
    return out
