"""The general path: litellm.acompletion, for every provider it knows.

Its replies pass the same boundary checks as the lean path's (replies.py), and
retries follow the same policy (retry.py: Retry-After, jitter, the deadline):
litellm is called with `num_retries=0` so that only one loop decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import httpx

from itsproxy.proxy.config import Deployment
from itsproxy.proxy.params import FORWARD
from itsproxy.proxy.upstream.backends.base import UpstreamError, UpstreamProtocolError
from itsproxy.proxy.upstream.litellm_loader import litellm
from itsproxy.proxy.upstream.replies import CHAT, EMBEDDINGS, TEXT, Finishes, Wire
from itsproxy.proxy.upstream.retry import RetryPolicy, parse_retry_after


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)  # litellm's errors carry the provider's httpx.Response
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        return parse_retry_after(headers.get("retry-after"))
    except AttributeError:
        return None


# What litellm says (as a 500 of its own) when a 200 reply did not parse as a chat completion.
_MALFORMED = ("Invalid response object", "Empty or invalid response")


def _broke_off(exc: BaseException) -> bool:
    """The reply's headers came (a 2xx: the upstream read the prompt) and its body broke off. litellm
    reports this as a "Connection error" 500 like a refused connection; the cause chain tells them apart."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, aiohttp.ClientPayloadError) or (
                isinstance(seen, httpx.RemoteProtocolError) and "message body" in str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _error(exc: Exception) -> UpstreamError:
    if _broke_off(exc):  # metered like the lean path's cut body: estimated, its output length unknown
        return UpstreamProtocolError("upstream reply broke off", "upstream_error")
    status = getattr(exc, "status_code", None)
    # litellm's messages can carry a traceback and the whole upstream reply: the first line says enough.
    message = str(getattr(exc, "message", None) or exc).strip().split("\n", 1)[0]
    message = message.split(" Traceback (most recent call last)", 1)[0][:500]
    if not isinstance(status, int):
        status = None
    if any(m in message for m in _MALFORMED):
        return UpstreamProtocolError(f"upstream reply is malformed: {message}")
    if "Timeout" in type(exc).__name__:
        return UpstreamError(f"upstream timed out: {message}")
    if status is not None and status >= 500 and "Connection" in type(exc).__name__:
        status = None
    return UpstreamError(message, status, "n" if "'n'" in message else None, retry_after=_retry_after(exc))


def _dump(obj: Any) -> Any:
    return obj.model_dump(exclude_none=True) if hasattr(obj, "model_dump") else obj


_SAYS = ("content", "tool_calls", "function_call", "reasoning_content", "refusal")


def _says(choice: Any) -> bool:
    """A choice (or a stream chunk's choice) carries some answer: text, a tool call, reasoning."""
    if not isinstance(choice, dict):
        return False
    part = choice.get("message") or choice.get("delta") or {}
    return bool(choice.get("text")) or (isinstance(part, dict) and any(part.get(k) for k in _SAYS))


def _own_usage(resp: dict[str, Any]) -> dict[str, Any]:
    """litellm fills a `usage` the upstream left out (zeros) or left half out (completion_tokens 0 for
    an answer that has text). Such a usage is litellm's, not the upstream's: it is dropped, so the
    call is counted by the proxy and flagged estimated, like the lean path's reply without usage."""
    u = resp.get("usage")
    if isinstance(u, dict) and not _real_usage(u, any(_says(c) for c in resp.get("choices") or [])):
        return {k: v for k, v in resp.items() if k != "usage"}
    return resp


def _real_usage(u: dict[str, Any], answered: bool) -> bool:
    prompt, completion, total = (u.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    if not prompt or (answered and not completion):
        return False
    return not (isinstance(total, int) and isinstance(completion, int) and total != prompt + completion)


# What litellm's completion, text_completion and embedding calls take by name.
LITELLM_KNOWN = FORWARD | {"messages", "prompt", "input", "stream", "stream_options", "n", "echo", "best_of", "suffix",
                           "encoding_format", "dimensions"}

class LitellmBackend:
    def __init__(self, retry: RetryPolicy | None = None) -> None:
        self.retry = retry or RetryPolicy()
        self.lib = litellm()  # at startup, never inside a request

    def _kwargs(self, entry: Deployment, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        # Parameters litellm does not know (top_k, min_p …) travel as the provider's extra body.
        extra = {k: v for k, v in body.items() if k not in LITELLM_KNOWN}
        known = {k: v for k, v in body.items() if k in LITELLM_KNOWN}
        out = {**known, **entry.params, "model": entry.model, "timeout": timeout, "num_retries": 0, "max_retries": 0}
        if extra:
            out["extra_body"] = extra
        return out

    async def _call(self, kwargs: dict[str, Any], deadline: float | None, wire: Wire = CHAT) -> Any:
        call = {CHAT: self.lib.acompletion, TEXT: self.lib.atext_completion, EMBEDDINGS: self.lib.aembedding}[wire]
        tries = 0
        while True:
            try:
                return await call(**kwargs)
            except UpstreamError:
                raise
            except Exception as exc:  # noqa: BLE001 - every litellm failure becomes one error type
                error = _error(exc)
            remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
            delay = self.retry.wait(tries, error, remaining)
            if delay is None:
                raise error
            await asyncio.sleep(delay)
            tries += 1

    async def complete(self, entry: Deployment, body: dict[str, Any], timeout: float,
                       deadline: float | None = None, wire: Wire = CHAT) -> dict[str, Any]:
        raw = _dump(await self._call(self._kwargs(entry, body, timeout), deadline, wire))
        return wire.check(_own_usage(raw) if wire is not EMBEDDINGS and isinstance(raw, dict) else raw)

    async def stream(self, entry: Deployment, body: dict[str, Any], timeout: float,
                     deadline: float | None = None, wire: Wire = CHAT) -> AsyncGenerator[dict[str, Any], None]:
        resp = await self._call(self._kwargs(entry, {**body, "stream": True}, timeout), deadline, wire)
        finishes, said = Finishes(), False
        try:
            async for raw in resp:
                chunk = wire.check_chunk(_dump(raw))
                finishes.add(chunk)
                said = said or any(_says(c) for c in chunk.get("choices") or [])
                usage = chunk.get("usage")
                if isinstance(usage, dict) and not _real_usage(usage, said):  # see _own_usage
                    chunk = {k: v for k, v in chunk.items() if k != "usage"}
                yield chunk
        except UpstreamError:
            raise
        except Exception as exc:  # noqa: BLE001 - the stream was open (a 200): whatever broke it is a 502
            raise UpstreamProtocolError(f"upstream stream failed: {_error(exc).message}",
                                        "upstream_stream_error") from None
        finishes.check_ended()  # litellm hides [DONE]: a finish_reason per choice is the only sign of an end
        if not said:  # e.g. a stream request answered with plain JSON: litellm makes it one empty "stop"
            raise UpstreamProtocolError("upstream stream carried no answer (not an event stream litellm could read)",
                                        "upstream_not_sse")

    async def aclose(self) -> None:
        return None
