"""The one interface through which every model call goes.

`Upstream` (one per app) owns the backends, the global concurrency cap, the
deployment balancer (upstream/deployments.py) and what it has learned about each
model's `n`. `bind()` gives a request its `Sampler`: every call it makes is
recorded in that request's ledger. A call goes to one deployment of its model;
on a retryable failure (no answer, 408/429/5xx) before any output it fails over
to another deployment not tried yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from itsproxy.proxy.config import ModelEntry
from itsproxy.proxy.metering.ledger import CallRecord, Ledger
from itsproxy.proxy.metering.tokens import count_message
from itsproxy.proxy.upstream.backends.base import UpstreamError, UpstreamProtocolError, retryable
from itsproxy.proxy.upstream.choices import choice_message, prompt_estimate, reply_message, split_completion
from itsproxy.proxy.upstream.completion_mode import as_chat, chunk_as_chat, text_body
from itsproxy.proxy.upstream.replies import CHAT, TEXT, Wire
from itsproxy.proxy.upstream.stream_tally import ChoiceTally, StreamedMessage
from itsproxy.strategies.generate import derive_seed
from itsproxy.strategies.types import Sample

log = logging.getLogger("itsproxy.upstream")

if TYPE_CHECKING:  # the pool hands out samplers: its module imports this one
    from itsproxy.proxy.upstream.pool import Upstream


class RequestSampler:
    """A request's view of the upstream: implements `itsproxy.strategies.ports.Sampler`."""

    def __init__(self, upstream: Upstream, ledger: Ledger, deadline: float | None = None) -> None:
        self.up = upstream
        self.ledger = ledger
        self.deadline = deadline

    def entry(self, model: str) -> ModelEntry:
        return self.up.entry(model)

    def timeout(self) -> float:
        return self.up.config.server.upstream_timeout_s

    def _warn(self, entry: ModelEntry, phase: str, exc: UpstreamError) -> None:
        """One line per failed upstream call, for operators: its status and model, redacted."""
        redact = self.up.config.redactor
        log.warning("upstream call failed: model=%s phase=%s status=%s code=%s: %s", entry.name, phase,
                    exc.status if exc.status is not None else "none", redact.optional(exc.code) or "-",
                    redact(exc.message)[:300])

    async def call(self, entry: ModelEntry, body: dict[str, Any], phase: str,
                   wire: Wire = CHAT) -> tuple[dict[str, Any], CallRecord]:
        """One non-streaming call to the endpoint `wire` names, metered."""
        record = self.ledger.open(phase, entry.name)
        started = time.monotonic()
        await self.up.slot()
        try:
            resp = await self._complete(entry, body, wire)
        except asyncio.CancelledError:
            record.outcome = "cancelled"
            self._meter_unfinished(record, entry, body, None)  # the upstream has read the prompt
            raise
        except UpstreamProtocolError as exc:  # it answered, wrongly: metered as far as the reply tells
            record.outcome = "error"
            self._warn(entry, phase, exc)
            if exc.answered:
                self._meter_unfinished(record, entry, body, exc.usage)
            raise
        except UpstreamError as exc:
            record.outcome = "error"
            self._warn(entry, phase, exc)
            raise
        finally:
            self.up.semaphore.release()
            record.latency_s = time.monotonic() - started
        self._meter(record, entry, body, resp)
        return resp, record

    async def _complete(self, entry: ModelEntry, body: dict[str, Any], wire: Wire) -> dict[str, Any]:
        tried: list[str] = []
        last: UpstreamError | None = None
        while True:
            lease = await self.up.lease(entry, tried, last)
            target = lease.deployment
            try:
                resp = await self.up.backend(target).complete(target, body, self.timeout(), self.deadline, wire)
            except UpstreamError as exc:
                lease.done(failed=retryable(exc), rate_limited=exc.status == 429)
                tried.append(target.id)
                if not retryable(exc) or len(tried) >= len(entry.deployments):
                    raise
                last = exc
                continue
            except BaseException:
                lease.done()
                raise
            usage = resp.get("usage") or {}
            lease.done(tokens=int(usage.get("total_tokens") or 0) if usage else None)
            return resp

    def _meter_unfinished(self, record: CallRecord, entry: ModelEntry, body: dict[str, Any],
                          usage: dict[str, Any] | None) -> None:
        """A call with no usable answer: the reply's own usage if it had a valid one, else the prompt's
        estimate (completion unknown), flagged estimated either way."""
        if usage is not None:
            record.prompt_tokens = usage["prompt_tokens"]
            record.completion_tokens = usage.get("completion_tokens", 0)
        else:
            record.prompt_tokens = prompt_estimate(body)
            record.output_unknown = True
        record.estimated = True
        record.cost_usd = self.up.price(entry).cost(record.prompt_tokens, record.completion_tokens, 0)

    def _meter(self, record: CallRecord, entry: ModelEntry, body: dict[str, Any], resp: dict[str, Any]) -> None:
        usage = resp.get("usage")  # checked at the boundary (replies.py): valid counts, or absent
        messages = [reply_message(c) for c in resp.get("choices") or []]
        record.choices = len(messages)
        if usage:
            record.prompt_tokens = usage["prompt_tokens"]
            record.completion_tokens = usage.get("completion_tokens", 0)
            record.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        else:  # the upstream gave no usage: count it ourselves, and say so
            record.prompt_tokens = prompt_estimate(body)
            record.completion_tokens = sum(count_message(m) for m in messages)
            record.estimated = True
        record.cost_usd = self.up.price(entry).cost(record.prompt_tokens, record.completion_tokens,
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
        if entry.mode == "completion":  # a base model: a raw prompt, the reply seen as chat
            resp, record = await self.call(entry, text_body(body), phase, TEXT)
            resp = as_chat(resp)
        else:
            resp, record = await self.call(entry, body, phase)
        choices = resp.get("choices") or []
        messages = [choice_message(c) for c in choices]
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
                     wire: Wire | None = None) -> AsyncGenerator[dict[str, Any], None]:
        """Streaming: yields upstream chunks, meters them when the stream ends (or is cut).

        `wire` given: that endpoint's chunks, as they are (passthrough). None: chat chunks,
        whatever the model's mode (strategies), a base model's prompt rendered and its chunks translated."""
        entry = self.entry(model)
        as_chat_chunks = wire is None and entry.mode == "completion"
        if as_chat_chunks:
            body, wire = text_body(body), TEXT
        record = record or self.ledger.open(phase, entry.name)
        tally = tally if tally is not None else ChoiceTally()
        started = time.monotonic()
        usage: dict[str, Any] | None = None
        answered = False  # once the upstream answered, it has read (and bills) the prompt
        await self.up.slot()
        try:
            async with contextlib.aclosing(self._chunks(entry, body, wire or CHAT)) as chunks:  # closes the upstream
                async for chunk in chunks:
                    if as_chat_chunks:
                        chunk = chunk_as_chat(chunk)
                    answered = True
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    tally.add(chunk)
                    yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            record.outcome = "cancelled"
            raise
        except UpstreamProtocolError as exc:
            record.outcome = "error"
            self._warn(entry, phase, exc)
            answered = answered or exc.answered
            raise
        except UpstreamError as exc:
            record.outcome = "error"
            self._warn(entry, phase, exc)
            raise
        finally:
            self.up.semaphore.release()
            record.latency_s = time.monotonic() - started
            self._meter_stream(record, entry, body, usage, tally.messages(), answered)

    async def _chunks(self, entry: ModelEntry, body: dict[str, Any],
                      wire: Wire) -> AsyncGenerator[dict[str, Any], None]:
        """One deployment's stream; fails over to another only before its first chunk."""
        tried: list[str] = []
        last: UpstreamError | None = None
        while True:
            lease = await self.up.lease(entry, tried, last)
            target, started, tokens = lease.deployment, False, None
            try:
                upstream = self.up.backend(target).stream(target, body, self.timeout(), self.deadline, wire)
                async with contextlib.aclosing(upstream) as up:
                    async for chunk in up:
                        started = True
                        if chunk.get("usage"):
                            tokens = int(chunk["usage"].get("total_tokens") or 0)
                        yield chunk
            except UpstreamError as exc:
                lease.done(failed=retryable(exc), rate_limited=exc.status == 429)
                tried.append(target.id)
                if started or not retryable(exc) or len(tried) >= len(entry.deployments):
                    raise
                last = exc
                continue
            except BaseException:
                lease.done()
                raise
            lease.done(tokens=tokens)
            return

    def _meter_stream(self, record: CallRecord, entry: ModelEntry, body: dict[str, Any],
                      usage: dict[str, Any] | None, messages: list[dict[str, Any]], answered: bool) -> None:
        if usage and record.outcome == "ok":  # checked at the boundary: valid counts
            record.prompt_tokens = usage["prompt_tokens"]
            record.completion_tokens = usage.get("completion_tokens", 0)
            record.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        elif answered or record.outcome in ("ok", "cancelled"):  # cancelled: the upstream had read the prompt
            record.prompt_tokens = prompt_estimate(body)
            record.completion_tokens = sum(count_message(m) for m in messages)
            record.estimated = True
            record.output_unknown = record.outcome != "ok"  # it broke off: more may have been generated
        record.choices = max(1, len(messages))
        record.cost_usd = self.up.price(entry).cost(record.prompt_tokens, record.completion_tokens,
                                                           record.cached_tokens)
