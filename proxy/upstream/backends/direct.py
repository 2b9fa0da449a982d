"""The lean path: one pooled aiohttp session POSTing OpenAI JSON to OpenAI-compatible bases.

litellm costs several ms of CPU per call; a pooled POST costs a fraction of
that, and a scaling proxy multiplies calls. aiohttp (already installed with
litellm) rather than httpx: httpcore's pool scans every pooled connection on
each request (a poll() per idle connection), which costs 2-3 ms of CPU per call
at 32-256 concurrent calls against ~0.15 ms for aiohttp (bench/README.md).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import certifi
import msgspec

from itsproxy.proxy.config import Deployment
from itsproxy.proxy.upstream.backends.base import UpstreamError, UpstreamProtocolError, error_from_body
from itsproxy.proxy.upstream.replies import CHAT, Finishes, Wire, decode_json
from itsproxy.proxy.upstream.retry import RetryPolicy, parse_retry_after
from itsproxy.proxy.upstream.sse_decoder import Event, SSEDecoder

T = TypeVar("T")
DEFAULT_MAX_BODY = 32 * 1024 * 1024

OPENAI_BASE = "https://api.openai.com/v1"
# litellm_params the direct path understands; anything else goes through litellm.
DIRECT_PARAMS = frozenset({"model", "api_base", "base_url", "api_key", "custom_llm_provider"})
DIRECT_PROVIDERS = frozenset({"openai", "hosted_vllm", "openai_like", "vllm"})


def direct_capable(entry: Deployment) -> bool:
    return entry.provider in DIRECT_PROVIDERS and set(entry.params) <= DIRECT_PARAMS and (
        entry.api_base is not None or entry.provider == "openai")


def _upstream_model(entry: Deployment) -> str:
    return entry.model.split("/", 1)[1] if "/" in entry.model else entry.model



class DirectBackend:
    def __init__(self, max_connections: int = 512, retry: RetryPolicy | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.max_connections = max_connections
        self.retry = retry or RetryPolicy()
        self.max_body_bytes = max_body_bytes  # a reply (or one stream line) larger than this is refused
        self.ssl = ssl.create_default_context(cafile=certifi.where())  # the CA bundle httpx used
        self._session: aiohttp.ClientSession | None = None  # made in the serving loop, on first use
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Idle pooled connections are dropped after 4 s: uvicorn (llama.cpp's and vLLM's servers)
            # closes them at 5 s, and a request sent on one it is closing fails before it is read.
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0, keepalive_timeout=4.0,
                                             ssl=self.ssl)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=True)
        return self._session

    def _timeout(self, timeout: float) -> aiohttp.ClientTimeout:
        # Like httpx's: each phase (pool wait + connect, every read) may take up to `timeout`, not the whole call.
        t = self._timeouts.get(timeout)
        if t is None:
            t = self._timeouts[timeout] = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        return t

    def _request(self, entry: Deployment, body: dict[str, Any], wire: Wire) -> tuple[str, dict[str, str], bytes]:
        base = (entry.api_base or OPENAI_BASE).rstrip("/")
        headers = {"content-type": "application/json"}
        if entry.params.get("api_key"):
            headers["authorization"] = f"Bearer {entry.params['api_key']}"
        payload = {**body, "model": _upstream_model(entry)}
        return f"{base}/{wire.path}", headers, msgspec.json.encode(payload)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], deadline: float | None) -> T:
        """`attempt()` until it succeeds or the retry policy gives up (then its error is raised)."""
        tries = 0
        while True:
            try:
                return await attempt()
            except UpstreamError as exc:
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                delay = self.retry.wait(tries, exc, remaining)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            tries += 1

    async def complete(self, entry: Deployment, body: dict[str, Any], timeout: float,
                       deadline: float | None = None, wire: Wire = CHAT) -> dict[str, Any]:
        url, headers, content = self._request(entry, body, wire)
        return await self._retrying(lambda: self._complete_once(url, headers, content, timeout, wire), deadline)

    async def _complete_once(self, url: str, headers: dict[str, str], content: bytes,
                             timeout: float, wire: Wire) -> dict[str, Any]:
        resp = await self._open(url, headers, content, timeout)
        # The upstream answered 2xx: it has read the prompt (and bills it) even if its body breaks off,
        # so the error says `answered` and the call is metered (estimated).
        try:
            raw = await self._read(resp)
        except TimeoutError:  # aiohttp's timeouts subclass it
            raise UpstreamProtocolError(f"upstream reply stalled for {timeout:.1f}s", "upstream_error") from None
        except aiohttp.ClientError as exc:
            raise UpstreamProtocolError(f"upstream reply broke off: {type(exc).__name__}", "upstream_error") from None
        finally:
            resp.release()
        return _reply(raw, wire)

    async def stream(self, entry: Deployment, body: dict[str, Any], timeout: float,
                     deadline: float | None = None, wire: Wire = CHAT) -> AsyncGenerator[dict[str, Any], None]:
        """Validated chunks. Errors before the first chunk are retried like `complete`'s; after it,
        a malformed chunk or a stream cut before its end raises, once the good chunks are out."""
        url, headers, content = self._request(entry, {**body, "stream": True}, wire)
        resp = await self._retrying(lambda: self._open(url, headers, content, timeout), deadline)
        try:
            async for chunk in self._chunks(resp, wire):
                yield chunk
        except TimeoutError:
            raise UpstreamError(f"upstream stream stalled for {timeout:.1f}s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream stream broke off: {type(exc).__name__}") from None
        finally:
            resp.release()  # a stream left part-read is closed, not pooled

    async def _open(self, url: str, headers: dict[str, str], content: bytes,
                    timeout: float) -> aiohttp.ClientResponse:
        """POST, and return the response once its status is a success (else raise the upstream's error)."""
        try:
            resp = await self.session.post(url, headers=headers, data=content, timeout=self._timeout(timeout),
                                           allow_redirects=False)
            if resp.status < 400:
                return resp
            try:
                raw = await self._read(resp)
            finally:
                resp.release()
        except TimeoutError:
            raise UpstreamError(f"upstream timed out after {timeout:.1f}s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream unreachable: {type(exc).__name__}") from None
        raise error_from_body(resp.status, _json(raw), f"upstream answered HTTP {resp.status}",
                              parse_retry_after(resp.headers.get("retry-after")))

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The whole body, refused past `max_body_bytes` (declared or actual) without buffering more."""
        cap = self.max_body_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise _too_large(cap)
        parts, size = [], 0
        async for data in resp.content.iter_any():
            size += len(data)
            if size > cap:
                raise _too_large(cap)
            parts.append(data)
        return b"".join(parts)

    async def _chunks(self, resp: aiohttp.ClientResponse, wire: Wire) -> AsyncIterator[dict[str, Any]]:
        kind = (resp.headers.get("content-type") or "text/event-stream").split(";")[0].strip().lower()
        if kind == "application/json":  # a whole completion instead of a stream: told as its chunks
            for told in wire.as_chunks(_reply(await self._read(resp), wire)):
                yield told
            return
        if kind != "text/event-stream":
            raise UpstreamProtocolError(f"upstream answered a stream request with {kind}", "upstream_not_sse",
                                        answered=False)
        finishes = Finishes()
        async for event in self._events(resp):
            if event.data == "[DONE]":
                return
            chunk = _chunk(event, wire)
            if chunk is not None:
                finishes.add(chunk)
                yield chunk
        # No [DONE] is fine when every choice finished: llama.cpp's server before its PR #9459 (2024-09)
        # and ik_llama.cpp end so. Anything else was cut.
        finishes.check_ended()

    async def _events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[Event]:
        decoder = SSEDecoder(max_line_bytes=self.max_body_bytes)
        try:
            async for data in resp.content.iter_any():
                for event in decoder.feed(data):
                    yield event
            for event in decoder.close():
                yield event
        except ValueError as exc:  # a line over the cap
            raise UpstreamProtocolError(f"upstream stream: {exc}", "upstream_body_too_large") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _json(raw: bytes | str) -> Any:
    try:
        return decode_json(raw)
    except msgspec.DecodeError:
        return None


def _reply(raw: bytes, wire: Wire) -> dict[str, Any]:
    payload = _json(raw)
    if not isinstance(payload, dict):
        raise UpstreamProtocolError("upstream sent a response that is not a JSON object", answered=False)
    if "error" in payload and "choices" not in payload and "data" not in payload:  # an error told with status 200
        raise error_from_body(502, payload, "upstream error")
    return wire.check(payload)


def _chunk(event: Event, wire: Wire) -> dict[str, Any] | None:
    """An event's chunk; None for events that carry none (other event types, empty data)."""
    if event.event == "error":
        raise error_from_body(502, _json(event.data), f"upstream stream error: {event.data[:200]}")
    if event.event != "message" or not event.data:
        return None
    try:
        chunk = decode_json(event.data)
    except msgspec.DecodeError:
        raise UpstreamProtocolError("upstream sent a stream chunk that is not JSON",
                                    "upstream_malformed_chunk") from None
    if isinstance(chunk, dict) and "error" in chunk and not chunk.get("choices"):
        raise error_from_body(502, chunk, "upstream stream error")
    return wire.check_chunk(chunk)


def _too_large(cap: int) -> UpstreamProtocolError:
    return UpstreamProtocolError(f"upstream reply exceeds the {cap}-byte cap (server.max_upstream_body_bytes)",
                                 "upstream_body_too_large", answered=False)
