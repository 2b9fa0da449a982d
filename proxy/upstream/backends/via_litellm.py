"""The general path: litellm.acompletion, for every provider it knows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from itsproxy.proxy.config import ModelEntry
from itsproxy.proxy.upstream.backends.base import UpstreamError
from itsproxy.proxy.upstream.litellm_loader import litellm


def _error(exc: Exception) -> UpstreamError:
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", None) or exc)
    if not isinstance(status, int):
        status = None
    if "Timeout" in type(exc).__name__:
        return UpstreamError(f"upstream timed out: {message}")
    if status is not None and status >= 500 and "Connection" in type(exc).__name__:
        status = None
    return UpstreamError(message, status, "n" if "'n'" in message else None)


def _dump(obj: Any) -> dict[str, Any]:
    return obj.model_dump(exclude_none=True) if hasattr(obj, "model_dump") else dict(obj)


class LitellmBackend:
    def __init__(self, num_retries: int = 0) -> None:
        self.num_retries = num_retries
        self.lib = litellm()  # at startup, never inside a request

    def _kwargs(self, entry: ModelEntry, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return {**body, **entry.params, "model": entry.model, "timeout": timeout, "num_retries": self.num_retries}

    async def complete(self, entry: ModelEntry, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            resp = await self.lib.acompletion(**self._kwargs(entry, body, timeout))
        except UpstreamError:
            raise
        except Exception as exc:  # noqa: BLE001 - every litellm failure becomes one error type
            raise _error(exc) from None
        return _dump(resp)

    async def stream(self, entry: ModelEntry, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]:
        try:
            resp = await self.lib.acompletion(**self._kwargs(entry, {**body, "stream": True}, timeout))
            async for chunk in resp:
                yield _dump(chunk)
        except UpstreamError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _error(exc) from None

    async def aclose(self) -> None:
        return None
