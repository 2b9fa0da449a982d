"""`check: {http: {url: ...}}` — a verification service decides.

POSTs the payload as JSON; expects `{"pass": bool, "critique": str}` back.
Redirects are not followed; non-2xx, bad JSON or a missing `pass` fail.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from itsproxy.strategies.types import SpecError, Verdict

from ._common import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT_S,
    LoopLocal,
    check_keys,
    env_value,
    failed,
    positive_int,
    positive_number,
    secs,
    verdict,
)

BODY_IN_CRITIQUE = 2 * 1024  # never quote more of a response body than this
MAX_BODY = 256 * 1024  # a longer response is refused, not buffered
HTTP_KEYS = ("url", "timeout_s", "max_concurrency", "headers")


def _snippet(body: bytes) -> str:
    text = body[:BODY_IN_CRITIQUE].decode("utf-8", errors="replace").strip()
    return text + (" …[truncated]" if len(body) > BODY_IN_CRITIQUE else "")


class HttpChecker:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_concurrency: int = DEFAULT_CONCURRENCY,
        headers: dict[str, str] | None = None,
    ) -> None:
        parsed = httpx.URL(url)
        host = parsed.host + (f":{parsed.port}" if parsed.port else "")
        self.name = f"http:{host}"
        self.url = url
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self.secrets = tuple(self.headers.values())  # a verifier's 401 may echo them: the proxy redacts them
        self._limit = LoopLocal(max_concurrency)
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _get_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                follow_redirects=False,
                trust_env=False,  # no proxies from the environment for a verifier
                headers=self.headers,
            )
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def check(self, payload: dict[str, Any]) -> Verdict:
        body = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
        async with self._limit.sem():
            try:
                async with asyncio.timeout(self.timeout_s):
                    status, raw, too_big = await self._post(body)
            except (TimeoutError, httpx.TimeoutException):
                return failed(self.name, f"checker timed out after {secs(self.timeout_s)}")
            except httpx.HTTPError as exc:
                return failed(self.name, f"checker request failed: {type(exc).__name__}: {exc}")
        if too_big:
            return failed(self.name, f"checker response exceeded {MAX_BODY} bytes (HTTP {status})")
        if not 200 <= status < 300:
            snippet = _snippet(raw)
            return failed(self.name, f"checker returned HTTP {status}" + (f": {snippet}" if snippet else ""))
        return self._interpret(raw)

    async def _post(self, body: bytes) -> tuple[int, bytes, bool]:
        client = self._get_client()
        headers = {"content-type": "application/json"}
        async with client.stream("POST", self.url, content=body, headers=headers) as resp:
            buf = bytearray()
            async for chunk in resp.aiter_bytes():
                buf += chunk
                if len(buf) > MAX_BODY:
                    return resp.status_code, bytes(buf[:BODY_IN_CRITIQUE]), True
            return resp.status_code, bytes(buf), False

    def _interpret(self, raw: bytes) -> Verdict:
        try:
            data: Any = json.loads(raw)
        except ValueError:
            return failed(self.name, f"checker response is not valid JSON: {_snippet(raw)}")
        if not isinstance(data, dict) or not isinstance(data.get("pass"), bool):
            return failed(
                self.name, f"checker response lacks a boolean 'pass': {_snippet(raw)}"
            )
        critique = data.get("critique")
        if critique is None:
            critique = ""
        if not isinstance(critique, str):
            return failed(self.name, "checker response has a non-string 'critique'")
        return verdict(self.name, data["pass"], critique)


def from_spec(spec: dict[str, Any], path: str) -> HttpChecker:
    hpath = f"{path}.http"
    http: Any = spec["http"]
    if isinstance(http, str):
        http = {"url": http}
    if not isinstance(http, dict):
        raise SpecError(hpath, "must be a mapping with a 'url' (or a URL string)")
    check_keys(http, HTTP_KEYS, hpath)
    url = http.get("url")
    if not isinstance(url, str):
        raise SpecError(f"{hpath}.url", f"must be an http(s) URL string, got {url!r}")
    try:
        parsed = httpx.URL(url)
    except Exception as exc:
        raise SpecError(f"{hpath}.url", f"invalid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise SpecError(f"{hpath}.url", f"must be an http(s) URL with a host, got {url!r}")
    headers = http.get("headers") or {}
    if not isinstance(headers, dict):
        raise SpecError(f"{hpath}.headers", "must be a mapping of header names to values")
    headers = {str(k): env_value(v, f"{hpath}.headers.{k}") for k, v in headers.items()}
    # nested settings win; the stage-level ones are the defaults
    timeout_s = positive_number(spec, "timeout_s", path, DEFAULT_TIMEOUT_S)
    concurrency = positive_int(spec, "max_concurrency", path, DEFAULT_CONCURRENCY)
    return HttpChecker(
        url,
        timeout_s=positive_number(http, "timeout_s", hpath, timeout_s),
        max_concurrency=positive_int(http, "max_concurrency", hpath, concurrency),
        headers=headers,
    )
