"""The lean path: one pooled aiohttp session POSTing OpenAI JSON to OpenAI-compatible bases.

litellm costs several ms of CPU per call; a pooled POST costs a fraction of
that, and a scaling proxy multiplies calls. aiohttp (already installed with
litellm) rather than httpx: httpcore's pool scans every pooled connection on
each request (a poll() per idle connection), which costs 2-3 ms of CPU per call
at 32-256 concurrent calls against ~0.15 ms for aiohttp (bench/README.md).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import certifi

from itsproxy.proxy.config import ModelEntry
from itsproxy.proxy.upstream.backends.base import UpstreamError, error_from_body

OPENAI_BASE = "https://api.openai.com/v1"
# litellm_params the direct path understands; anything else goes through litellm.
DIRECT_PARAMS = frozenset({"model", "api_base", "base_url", "api_key", "custom_llm_provider"})
DIRECT_PROVIDERS = frozenset({"openai", "hosted_vllm", "openai_like", "vllm"})


def direct_capable(entry: ModelEntry) -> bool:
    return entry.provider in DIRECT_PROVIDERS and set(entry.params) <= DIRECT_PARAMS and (
        entry.api_base is not None or entry.provider == "openai")


def _upstream_model(entry: ModelEntry) -> str:
    return entry.model.split("/", 1)[1] if "/" in entry.model else entry.model


RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def retryable(exc: UpstreamError) -> bool:
    """Worth another try: no answer at all (connect failure, timeout) or a transient status."""
    return exc.status is None or exc.status in RETRY_STATUS


class DirectBackend:
    def __init__(self, max_connections: int = 512, num_retries: int = 0, backoff_s: float = 0.25) -> None:
        self.max_connections = max_connections
        self.num_retries = num_retries  # as litellm's num_retries: extra attempts, with backoff
        self.backoff_s = backoff_s
        self.ssl = ssl.create_default_context(cafile=certifi.where())  # the CA bundle httpx used
        self._session: aiohttp.ClientSession | None = None  # made in the serving loop, on first use
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0, keepalive_timeout=5.0,
                                             ssl=self.ssl)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=True)
        return self._session

    def _timeout(self, timeout: float) -> aiohttp.ClientTimeout:
        # Like httpx's: each phase (pool wait + connect, every read) may take up to `timeout`, not the whole call.
        t = self._timeouts.get(timeout)
        if t is None:
            t = self._timeouts[timeout] = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        return t

    def _request(self, entry: ModelEntry, body: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
        base = (entry.api_base or OPENAI_BASE).rstrip("/")
        headers = {"content-type": "application/json"}
        if entry.params.get("api_key"):
            headers["authorization"] = f"Bearer {entry.params['api_key']}"
        payload = {**body, "model": _upstream_model(entry)}
        return f"{base}/chat/completions", headers, json.dumps(payload, separators=(",", ":")).encode()

    def _post(self, url: str, headers: dict[str, str], content: bytes, timeout: float):
        return self.session.post(url, headers=headers, data=content, timeout=self._timeout(timeout),
                                 allow_redirects=False)

    async def complete(self, entry: ModelEntry, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        url, headers, content = self._request(entry, body)
        for attempt in range(self.num_retries + 1):
            try:
                return await self._complete_once(url, headers, content, timeout)
            except UpstreamError as exc:
                if attempt == self.num_retries or not retryable(exc):
                    raise
            await asyncio.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    async def _complete_once(self, url: str, headers: dict[str, str], content: bytes,
                             timeout: float) -> dict[str, Any]:
        try:
            async with self._post(url, headers, content, timeout) as resp:
                status, raw = resp.status, await resp.read()
        except TimeoutError:  # aiohttp's timeouts subclass it
            raise UpstreamError(f"upstream timed out after {timeout:.1f}s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream unreachable: {type(exc).__name__}") from None
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if status >= 400:
            raise error_from_body(status, payload, f"upstream answered HTTP {status}")
        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
            raise UpstreamError("upstream sent a response that is not a chat completion", 502)
        return payload

    async def stream(self, entry: ModelEntry, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        url, headers, content = self._request(entry, {**body, "stream": True})
        try:
            async with self._post(url, headers, content, timeout) as resp:
                if resp.status >= 400:
                    raw = await resp.read()
                    try:
                        payload = json.loads(raw)
                    except ValueError:
                        payload = None
                    raise error_from_body(resp.status, payload, f"upstream answered HTTP {resp.status}")
                async for line in _lines(resp.content):
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if isinstance(chunk, dict) and "error" in chunk:
                        raise error_from_body(502, chunk, "upstream stream error")
                    yield chunk
        except TimeoutError:
            raise UpstreamError(f"upstream timed out after {timeout:.1f}s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream unreachable: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The body's lines (\n or \r\n), decoded; no line-length limit (a big SSE event is one line)."""
    pending = b""
    async for data in content.iter_any():
        if b"\n" not in data:
            pending += data
            continue
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", "replace")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8", "replace")
