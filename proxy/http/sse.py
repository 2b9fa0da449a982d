"""Server-sent events for both kinds of route.

Passthrough relays upstream chunks live. A scaling route cannot know its
answer before selection: it opens the stream at once (role chunk), sends SSE
comments while it works, then the selected answer, the final chunk, the usage
chunk when asked, and `[DONE]`; the `its` figures ride on the last chunk.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import TYPE_CHECKING, Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette._utils import create_collapsing_task_group

from itsproxy.proxy.upstream.backends.base import UpstreamError
from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.http.chat_request import ChatRequest
from itsproxy.proxy.outcome import Outcome, chunk, message_deltas, new_id

if TYPE_CHECKING:
    from itsproxy.proxy.runtime import Exchange, Services

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class EventStream(StreamingResponse):
    """A streaming response that always watches for the client leaving, so the
    work behind the stream is cancelled at once, not at the next write."""

    media_type = "text/event-stream"

    async def __call__(self, scope, receive, send) -> None:
        async with create_collapsing_task_group() as group:
            async def wrap(func) -> None:
                await func()
                group.cancel_scope.cancel()

            group.start_soon(wrap, partial(self.stream_response, send))
            await wrap(partial(self.listen_for_disconnect, receive))


class Streams:
    def __init__(self, services: "Services") -> None:
        self.s = services

    async def open(self, request: Request, req: ChatRequest, ex: "Exchange") -> EventStream:
        route = ex.route
        if route.passthrough:
            return await self._passthrough(req, ex)
        from itsproxy.proxy.http.chat import scaling_context

        scaling_context(self.s, req, route, ex.ledger)  # validate its.n before the stream opens
        return EventStream(self._scaling(req, ex), headers={**SSE_HEADERS, "x-its-route": route.name})

    async def _passthrough(self, req: ChatRequest, ex: "Exchange") -> EventStream:
        from itsproxy.proxy.http.chat import upstream_failure

        body = req.upstream_body()
        body["stream_options"] = {"include_usage": True}  # always meter, even if the client did not ask
        route, ledger = ex.route, ex.ledger
        upstream = self.s.upstream.bind(ledger).stream(route.target, body)
        try:
            first = await asyncio.wait_for(upstream.__anext__(), route.limits.timeout_s)
        except StopAsyncIteration:
            first = None
        except asyncio.TimeoutError:
            await upstream.aclose()
            raise ApiError(504, "the upstream did not start streaming in time", code="deadline_exceeded") from None
        except UpstreamError as exc:
            raise upstream_failure([exc], self.s.secrets, passthrough=True) from None
        return EventStream(self._relay(req, ex, first, upstream),
                           headers={**SSE_HEADERS, "x-its-route": route.name})

    async def _relay(self, req: ChatRequest, ex: "Exchange", first: dict | None,
                     upstream: AsyncIterator[dict]) -> AsyncIterator[bytes]:
        route, ledger = ex.route, ex.ledger
        status, held = 200, None
        try:
            chunks = _prepend(first, upstream)
            async with asyncio.timeout(route.limits.timeout_s):
                async for c in chunks:
                    if not req.include_usage:
                        if not c.get("choices") and c.get("usage"):
                            continue  # the usage chunk we asked for on our own behalf
                        c.pop("usage", None)
                    if held is not None:
                        yield sse(held)
                    held = c
            if held is not None:
                held["its"] = {"route": route.name, "strategy": "passthrough",
                               "usage": ledger.usage_breakdown(ledger.total())}
                yield sse(held)
            yield DONE
        except (UpstreamError, TimeoutError) as exc:
            status = 502 if isinstance(exc, UpstreamError) else 504
            if held is not None:
                yield sse(held)
            yield sse({"error": {"message": "upstream stream failed" if status == 502 else "deadline exceeded",
                                 "type": "upstream_error", "param": None, "code": str(status)}})
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            await upstream.aclose()
            await ex.finish(status)

    async def _scaling(self, req: ChatRequest, ex: "Exchange") -> AsyncIterator[bytes]:
        from itsproxy.proxy.http.chat import run_scaling

        route, ledger = ex.route, ex.ledger
        rid, created = new_id()
        yield sse(chunk(rid, created, req.model, {"role": "assistant", "content": ""}))
        task = asyncio.ensure_future(asyncio.wait_for(run_scaling(self.s, req, route, ledger), route.limits.timeout_s))
        status, outcome, error = 200, None, None
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.s.config.server.keepalive_s)
                if done:
                    break
                yield b": working\n\n"
            try:
                outcome = task.result()
            except asyncio.TimeoutError:
                raise ApiError(504, f"the request did not finish within its {route.limits.timeout_s:g}s deadline",
                               code="deadline_exceeded") from None
            outcome.id, outcome.created = rid, created
            for part in self._answer(req, outcome):
                yield part
        except ApiError as err:
            status, error = err.status, err
            yield sse(err.body())
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await ex.finish(status, outcome, error)

    def _answer(self, req: ChatRequest, outcome: Outcome) -> list[bytes]:
        rid, created, model = outcome.id, outcome.created, req.model
        parts = [sse(chunk(rid, created, model, d)) for d in message_deltas(outcome.message())]
        finish = outcome.winner.sample.finish_reason or "stop"
        final = chunk(rid, created, model, {}, finish)
        if req.include_usage:
            parts.append(sse(final))
            final = chunk(rid, created, model, None, usage=outcome.usage())
        final["its"] = outcome.its()
        parts += [sse(final), DONE]
        return parts


async def _prepend(first: dict | None, rest: AsyncIterator[dict]) -> AsyncIterator[dict]:
    if first is not None:
        yield first
    async for item in rest:
        yield item
