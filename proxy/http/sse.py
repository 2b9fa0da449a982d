"""Server-sent events to the client, and the one response class every stream uses.

`EventStream` runs its producer beside a watcher on the client's connection.
Whatever ends the stream (the producer finishing, an error it turned into an
event, the client leaving, the server shutting down), the producer is closed
(so the upstream calls behind it are cancelled and metered as far as they got)
and only then is `on_close` awaited, once, with how it ended: "done",
"client_left", "error" (a bug of ours), or "deadline" (a backstop: a client that stops reading cannot
hold a stream open past it). The
request is settled there, never in a generator's `finally` (a generator left
suspended at a `yield` when the client leaves would never settle).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import msgspec
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger("itsproxy")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": working\n\n"


_encode = msgspec.json.Encoder().encode  # compact UTF-8 JSON, several times faster than json.dumps


def sse(data: Any, event: str | None = None) -> bytes:
    line = b"data: " + _encode(data) + b"\n\n"
    return line if event is None else b"event: " + event.encode() + b"\n" + line


async def client_gone(receive: Receive) -> None:
    """Returns once the client has disconnected (the one disconnect watcher)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None], on_close: Callable[[str], Awaitable[None]],
                 deadline: float, headers: dict[str, str] | None = None) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **(headers or {})})  # no body attribute: no content-length
        self.events = events
        self.on_close = on_close
        self.deadline = deadline  # event-loop time

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ending = "client_left"
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            ending = await self._run(send, receive)
            if ending == "done":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the socket went away under a send
            ending = "client_left"
        finally:
            await asyncio.shield(self.on_close(ending))

    async def _run(self, send: Send, receive: Receive) -> str:
        pump = asyncio.ensure_future(self._pump(send))
        watcher = asyncio.ensure_future(client_gone(receive))
        remaining = max(0.0, self.deadline - asyncio.get_running_loop().time())
        try:
            done, _ = await asyncio.wait({pump, watcher}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watcher):
                task.cancel()
            await asyncio.gather(pump, watcher, return_exceptions=True)
        if pump in done:
            if pump.exception() is not None:  # a bug of ours: cut the stream, count it as one
                log.error("stream producer failed: %s", type(pump.exception()).__name__, exc_info=pump.exception())
                return "error"
            return "done"
        return "client_left" if watcher in done else "deadline"

    async def _pump(self, send: Send) -> None:
        try:
            async for part in self.events:
                await send({"type": "http.response.body", "body": part, "more_body": True})
        finally:
            await self.events.aclose()  # close the producer now, not at garbage collection
