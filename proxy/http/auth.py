"""Who may call: API keys checked in constant time, read from Bearer or Basic."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.types import Scope

from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.telemetry import metrics

KEY_SCOPE = "itsproxy.client_key"  # the ASGI scope entry holding a key the middleware accepted


def caller_key(scope: Scope) -> str | None:
    """The client's key for a request: as the middleware read it, else from its headers."""
    return scope[KEY_SCOPE] if KEY_SCOPE in scope else client_key(Headers(scope=scope))


def client_key(headers: Headers) -> str | None:
    """The client's API key: Bearer, or Basic with the key as password (so a
    browser can open the dashboard). Budgets read the key the same way."""
    scheme, _, cred = (headers.get("authorization") or "").partition(" ")
    scheme, cred = scheme.lower(), cred.strip()
    if scheme == "basic":
        try:
            cred = base64.b64decode(cred).decode("utf-8", "replace").partition(":")[2]
        except (binascii.Error, ValueError):
            return None
    elif scheme != "bearer":
        return None
    return cred or None


def page_key(scope: Any) -> str | None:
    """`/dashboard?key=…`: the page (HTML only, no data) may be opened with the key in its URL;
    the page then sends the key as a header on its own requests."""
    if scope["path"] != "/dashboard":
        return None
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("key")
    return values[0] if values else None


class AuthMiddleware:
    """Bearer keys on /v1/*, /chat/*, /dashboard (and /metrics if protected); /health stays open."""

    def __init__(self, app: Any, keys: list[str], protect_metrics: bool) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.protect_metrics = protect_metrics

    def guarded(self, path: str) -> bool:
        if path.startswith("/dashboard/static/"):  # the page's own script and styles: public, no data
            return False
        if path.startswith(("/v1/", "/chat/", "/models", "/dashboard")):
            return True
        return self.protect_metrics and path.startswith("/metrics")

    def allowed(self, key: str | None) -> bool:
        token = key.encode() if key is not None else None
        ok = False
        for k in self.keys:  # compare against every key: no early exit to time
            ok |= token is not None and hmac.compare_digest(token, k)
        return ok

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.keys or not self.guarded(scope["path"]):
            return await self.app(scope, receive, send)
        key = client_key(Headers(scope=scope))
        if self.allowed(key):
            scope[KEY_SCOPE] = key  # read once: the request path takes it from here
            return await self.app(scope, receive, send)
        if self.allowed(page_key(scope)):
            return await self.app(scope, receive, send)
        headers = {"www-authenticate": 'Basic realm="itsproxy"'} if scope["path"].startswith("/dashboard") else {}
        err = ApiError(401, "Incorrect API key provided", code="invalid_api_key", headers=headers)
        metrics.refused(401)  # never reaches the request path, so never counted there
        await err.response()(scope, receive, send)
