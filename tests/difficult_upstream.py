"""A deliberately difficult OpenAI-compatible upstream, on loopback, for the upstream layer's tests.

The mode is the model name the proxy sends (a model_list entry `openai/<mode>`),
so one server plays every fault. Every answer says "The answer is 42." so vote
routes have something to agree on when the reply is sound.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from itsproxy.proxy.serving import ServerHandle, embedded_config, serve_in_thread

ANSWER = "The answer is 42."
WORDS = ["The", " answer", " is", " 42."]
USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}


def completion(n: int = 1, content: Any = ANSWER, usage: Any = USAGE, choices: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-difficult", "object": "chat.completion", "created": 1, "model": "difficult",
        "choices": choices if choices is not None else [
            {"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            for i in range(n)],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "chatcmpl-difficult", "object": "chat.completion.chunk", "created": 1,
                           "model": "difficult", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        out["choices"], out["usage"] = [], usage
    return out


def chunks(finish: bool = True, usage: bool = True) -> list[dict[str, Any]]:
    out = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": w}) for w in WORDS]
    if finish:
        out.append(chunk({}, "stop"))
    if usage:
        out.append(chunk({}, usage=USAGE))
    return out


def events(items: list[dict[str, Any]], done: bool = True, eol: str = "\n") -> list[str]:
    out = [f"data: {json.dumps(c)}{eol}{eol}" for c in items]
    return out + ([f"data: [DONE]{eol}{eol}"] if done else [])


def multiline(c: dict[str, Any]) -> str:
    """One chunk over several `data:` lines (JSON allows the newlines the join puts between them)."""
    text = json.dumps(c, indent=1)
    return "".join(f"data: {line}\n" for line in text.split("\n")) + "\n"


def sse(parts: list[str | bytes], head: bytes = b"") -> StreamingResponse:
    async def gen() -> AsyncIterator[bytes]:
        if head:
            yield head
        for p in parts:
            yield p.encode() if isinstance(p, str) else p
            await asyncio.sleep(0)

    return StreamingResponse(gen(), media_type="text/event-stream")


class Difficult:
    """The server's modes; `hits` counts requests per mode (what a retry test reads)."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.bodies: list[dict[str, Any]] = []

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.bodies.append(body)
        mode = body["model"]
        self.hits[mode] = self.hits.get(mode, 0) + 1
        if mode == "slow":  # answers late: what a cancelled call meets
            await asyncio.sleep(2)
            mode = "ok"
        handler: Callable[..., Response] = getattr(self, f"mode_{mode}")
        return handler(body, bool(body.get("stream")), self.hits[mode])

    # ---- sound streams in every legal SSE spelling
    def mode_ok(self, body, stream, hit) -> Response:
        return sse(events(chunks())) if stream else JSONResponse(completion(body.get("n") or 1))

    def mode_multiline(self, body, stream, hit) -> Response:
        return sse([multiline(c) for c in chunks()] + ["data: [DONE]\n\n"])

    def mode_comments(self, body, stream, hit) -> Response:
        parts = [": hello\n\n", "retry: 3000\n", "event: ping\n\n"]
        for i, c in enumerate(chunks()):
            parts += [f": keepalive {i}\n", f"id: {i}\n", f"data: {json.dumps(c)}\n\n"]
        return sse(parts + ["data: [DONE]\n\n"])

    def mode_crlf(self, body, stream, hit) -> Response:
        return sse(events(chunks(), eol="\r\n"))

    def mode_cr(self, body, stream, hit) -> Response:
        return sse(events(chunks(), eol="\r"))

    def mode_bom(self, body, stream, hit) -> Response:
        return sse(events(chunks()), head=b"\xef\xbb\xbf")

    def mode_split(self, body, stream, hit) -> Response:
        """Every byte its own write: events, lines and UTF-8 split anywhere."""
        raw = "".join(events(chunks())).encode()
        return sse([raw[i:i + 1] for i in range(len(raw))])

    def mode_no_done(self, body, stream, hit) -> Response:
        return sse(events(chunks(), done=False))

    # ---- streams that go wrong
    def mode_truncated(self, body, stream, hit) -> Response:
        return sse(events(chunks(finish=False, usage=False), done=False))

    def mode_cut_event(self, body, stream, hit) -> Response:
        return sse(events(chunks(finish=False, usage=False), done=False) + ['data: {"id": "x", "choices": []}'])

    def mode_malformed_chunk(self, body, stream, hit) -> Response:
        return sse(events(chunks()[:3], done=False) + ["data: {not json\n\n"] + events(chunks()[3:]))

    def mode_error_event(self, body, stream, hit) -> Response:
        return sse(events(chunks()[:2], done=False) + ['data: {"error": {"message": "overloaded"}}\n\n'])

    def mode_json_reply(self, body, stream, hit) -> Response:
        return JSONResponse(completion(body.get("n") or 1))

    def mode_json_error(self, body, stream, hit) -> Response:
        return JSONResponse({"error": {"message": "model is loading", "type": "server_error"}})

    def mode_html(self, body, stream, hit) -> Response:
        return Response("<html><body>502 Bad Gateway</body></html>", media_type="text/html")

    # ---- status and retries
    def mode_ratelimit(self, body, stream, hit) -> Response:
        if hit % 2:
            return JSONResponse({"error": {"message": "slow down"}}, 429, headers={"retry-after": "1"})
        return self.mode_ok(body, stream, hit)

    def mode_ratelimit_date(self, body, stream, hit) -> Response:
        if hit % 2:
            return JSONResponse({"error": {"message": "slow down"}}, 429,
                                headers={"retry-after": formatdate(usegmt=True)})
        return self.mode_ok(body, stream, hit)

    def mode_ratelimit_long(self, body, stream, hit) -> Response:
        return JSONResponse({"error": {"message": "come back later"}}, 429, headers={"retry-after": "120"})

    def mode_n_refused(self, body, stream, hit) -> Response:
        if (body.get("n") or 1) > 1:
            return JSONResponse({"error": {"message": "n must be 1", "param": "n"}}, 400)
        return self.mode_ok(body, stream, hit)

    # ---- malformed replies
    def mode_usage_str(self, body, stream, hit) -> Response:
        return self._usage({"prompt_tokens": "many", "completion_tokens": 5}, stream)

    def mode_usage_list(self, body, stream, hit) -> Response:
        return self._usage([1, 2, 3], stream)

    def mode_usage_negative(self, body, stream, hit) -> Response:
        return self._usage({"prompt_tokens": -100000, "completion_tokens": -5, "total_tokens": -100005}, stream)

    def _usage(self, usage: Any, stream: bool) -> Response:
        if stream:
            return sse(events(chunks(usage=False) + [chunk({}, usage=usage)]))
        return JSONResponse(completion(usage=usage))

    def mode_bad_choices(self, body, stream, hit) -> Response:
        if stream:
            return sse(events([{"id": "x", "choices": [1, "two", None]}]))
        return JSONResponse(completion(choices=[1, "two", None]))

    def mode_object_content(self, body, stream, hit) -> Response:
        if stream:
            return sse(events([chunk({"content": {"text": "42"}}), chunk({}, "stop")]))
        return JSONResponse(completion(content={"text": "42"}))

    def mode_parts_content(self, body, stream, hit) -> Response:
        parts = [{"type": "text", "text": "The answer "}, {"type": "text", "text": "is 42."}]
        if stream:
            return sse(events([chunk({"content": parts}), chunk({}, "stop")]))
        return JSONResponse(completion(content=parts))

    def mode_huge(self, body, stream, hit) -> Response:
        big = "x" * (2 * 1024 * 1024)
        if stream:
            return sse(events([chunk({"content": big}), chunk({}, "stop")]))
        return JSONResponse(completion(content=big))


def serve() -> tuple[ServerHandle, Difficult]:
    difficult = Difficult()
    return serve_in_thread(embedded_config(difficult.app())), difficult
