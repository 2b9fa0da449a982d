"""The lean path: one pooled httpx client POSTing OpenAI JSON to OpenAI-compatible bases.

litellm costs several ms of CPU per call; a pooled POST costs a fraction of
that, and a scaling proxy multiplies calls.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import httpx

from proxy.backends.base import UpstreamError, error_from_body
from proxy.config import ModelEntry

OPENAI_BASE = "https://api.openai.com/v1"
# litellm_params the direct path understands; anything else goes through litellm.
DIRECT_PARAMS = frozenset({"model", "api_base", "base_url", "api_key", "custom_llm_provider"})
DIRECT_PROVIDERS = frozenset({"openai", "hosted_vllm", "openai_like", "vllm"})


def direct_capable(entry: ModelEntry) -> bool:
    return entry.provider in DIRECT_PROVIDERS and set(entry.params) <= DIRECT_PARAMS and (
        entry.api_base is not None or entry.provider == "openai")


def _upstream_model(entry: ModelEntry) -> str:
    return entry.model.split("/", 1)[1] if "/" in entry.model else entry.model


class DirectBackend:
    def __init__(self, max_connections: int = 512) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.client = httpx.AsyncClient(limits=limits, follow_redirects=False, trust_env=False)

    def _request(self, entry: ModelEntry, body: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
        base = (entry.api_base or OPENAI_BASE).rstrip("/")
        headers = {"content-type": "application/json"}
        if entry.params.get("api_key"):
            headers["authorization"] = f"Bearer {entry.params['api_key']}"
        payload = {**body, "model": _upstream_model(entry)}
        return f"{base}/chat/completions", headers, json.dumps(payload, separators=(",", ":")).encode()

    async def complete(self, entry: ModelEntry, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        url, headers, content = self._request(entry, body)
        try:
            resp = await self.client.post(url, headers=headers, content=content, timeout=timeout)
        except httpx.TimeoutException:
            raise UpstreamError(f"upstream timed out after {timeout:.1f}s") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream unreachable: {type(exc).__name__}") from None
        try:
            payload = json.loads(resp.content)
        except ValueError:
            payload = None
        if resp.status_code >= 400:
            raise error_from_body(resp.status_code, payload, f"upstream answered HTTP {resp.status_code}")
        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
            raise UpstreamError("upstream sent a response that is not a chat completion", 502)
        return payload

    async def stream(self, entry: ModelEntry, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        url, headers, content = self._request(entry, {**body, "stream": True})
        try:
            async with self.client.stream("POST", url, headers=headers, content=content, timeout=timeout) as resp:
                if resp.status_code >= 400:
                    raw = await resp.aread()
                    try:
                        payload = json.loads(raw)
                    except ValueError:
                        payload = None
                    raise error_from_body(resp.status_code, payload, f"upstream answered HTTP {resp.status_code}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if isinstance(chunk, dict) and "error" in chunk:
                        raise error_from_body(502, chunk, "upstream stream error")
                    yield chunk
        except httpx.TimeoutException:
            raise UpstreamError(f"upstream timed out after {timeout:.1f}s") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream unreachable: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        await self.client.aclose()
