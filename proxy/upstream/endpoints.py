"""Metered calls to the non-chat endpoints a route's config names (reward models).

Strategies never do HTTP or count tokens: a stage asks the request's
`MeteredHttp` port (`itsproxy.strategies.ports`) for a JSON POST, and this module
does the call, records it in the request's ledger (phase, model, the usage the
endpoint reports, latency, outcome) and prices it like every other call: with the
model_list price when `model` names a model_list entry; otherwise unknown when
the endpoint reports tokens, and nothing when it reports none.

httpx, not the chat path's aiohttp session: these calls are few per request
and go to a different host than the models (no redirects, no proxies from the
environment, a capped reply size).
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
from typing import Any

import certifi
import httpx

from itsproxy.proxy.metering.ledger import CallRecord, Ledger
from itsproxy.proxy.metering.pricing import Prices
from itsproxy.strategies.ports import EndpointError

MAX_REPLY_BYTES = 8 * 1024 * 1024  # a longer reply is refused, not buffered


class Endpoints:
    """One per app: the HTTP client (made in the serving loop on first use) and the prices."""

    def __init__(self, prices: dict[str, Prices]) -> None:
        self.prices = prices
        # Loaded here, at startup: reading the CA bundle inside a request would block the event loop.
        self.ssl = ssl.create_default_context(cafile=certifi.where())
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> httpx.AsyncClient:
        # A config that outlives its loop (reload, tests) gets a fresh client in the new loop.
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = httpx.AsyncClient(verify=self.ssl, trust_env=False, follow_redirects=False)
            self._loop = loop
        return self._client

    def bind(self, ledger: Ledger) -> MeteredEndpoints:
        return MeteredEndpoints(self, ledger)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class MeteredEndpoints:
    """A request's view of the endpoints: implements `itsproxy.strategies.ports.MeteredHttp`."""

    def __init__(self, endpoints: Endpoints, ledger: Ledger) -> None:
        self.endpoints = endpoints
        self.ledger = ledger

    async def post_json(self, url: str, body: dict[str, Any], *, phase: str, model: str,
                        headers: dict[str, str] | None = None, timeout: float) -> dict[str, Any]:
        """POST `body` as JSON; the reply must be a JSON object. Raises `EndpointError` otherwise."""
        client = self.endpoints.client()
        record = self.ledger.open(phase, model)
        record.choices = 0
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):  # the whole call, however slowly the reply drips
                status, raw = await self._post(client, url, body, headers or {}, timeout)
        except asyncio.CancelledError:
            self._close(record, started, "cancelled")
            raise
        except (TimeoutError, httpx.TimeoutException):
            self._close(record, started, "error")
            raise EndpointError(f"endpoint timed out after {timeout:g}s") from None
        except httpx.HTTPError as exc:
            self._close(record, started, "error")
            raise EndpointError(f"endpoint failed ({type(exc).__name__})") from None
        problem = (f"endpoint answered HTTP {status}" if status >= 400 else
                   f"reply exceeds {MAX_REPLY_BYTES} bytes" if raw is None else None)
        payload: Any = None
        if problem is None:
            try:
                payload = json.loads(raw or b"")
            except ValueError as exc:  # includes bad UTF-8
                problem = f"endpoint failed ({type(exc).__name__})"
            else:
                problem = None if isinstance(payload, dict) else "reply is not a JSON object"
        if problem is not None:
            self._close(record, started, "error")
            raise EndpointError(problem)
        self._close(record, started, "ok", payload.get("usage"))
        return payload

    async def _post(self, client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str],
                    timeout: float) -> tuple[int, bytes | None]:
        """The status and the reply's bytes (None when the reply is too long)."""
        async with client.stream("POST", url, json=body, headers=headers, timeout=timeout) as resp:
            buf = bytearray()
            async for chunk in resp.aiter_bytes():
                buf += chunk
                if len(buf) > MAX_REPLY_BYTES:
                    return resp.status_code, None
            return resp.status_code, bytes(buf)

    def _close(self, record: CallRecord, started: float, outcome: str, usage: Any = None) -> None:
        record.latency_s, record.outcome = time.monotonic() - started, outcome
        if isinstance(usage, dict):
            record.prompt_tokens = _count(usage.get("prompt_tokens"))
            record.completion_tokens = _count(usage.get("completion_tokens"))
        prices = self.endpoints.prices.get(record.model)
        if prices is not None:
            record.cost_usd = prices.cost(record.prompt_tokens, record.completion_tokens)
        else:  # nobody prices this endpoint: unknown when it spent tokens, nothing when it reported none
            record.cost_usd = 0.0 if record.total_tokens == 0 else None


def _count(value: Any) -> int:
    """A token count an endpoint reported; anything but a non-negative integer counts as 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return 0
    return int(value)
