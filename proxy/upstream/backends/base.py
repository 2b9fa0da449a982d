"""What a backend promises, and the errors it raises."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any, Protocol

from itsproxy.proxy.config import ModelEntry
from itsproxy.strategies.types import SampleError

# Providers say "n is not supported" in many ways.
_N_ERROR = re.compile(
    r"(\bn\b\s*(>|>=|=|must|should|is not|not supported|greater|only|cannot|can't))|(['\"`]n['\"`])"
    r"|(parameter\s+n\b)|(\bn\s+parameter)|(multiple (choices|completions|candidates))",
    re.IGNORECASE,
)


class UpstreamError(SampleError):
    """An upstream call failed. `status` is the upstream's HTTP status when it answered."""

    def __init__(self, message: str, status: int | None = None, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code

    @property
    def rejected(self) -> bool:
        """The upstream refused the request itself (the client's fault, not worth retrying)."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in (408, 409, 429)

    @property
    def about_n(self) -> bool:
        if not self.rejected:
            return False
        return self.param == "n" or bool(_N_ERROR.search(self.message))


class UpstreamBusy(UpstreamError):
    """The proxy's own cap on concurrent upstream calls stayed full too long."""


class Backend(Protocol):
    async def complete(self, entry: ModelEntry, body: dict[str, Any], timeout: float) -> dict[str, Any]: ...

    def stream(self, entry: ModelEntry, body: dict[str, Any], timeout: float) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


def error_from_body(status: int, payload: Any, fallback: str) -> UpstreamError:
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict):
        return UpstreamError(str(err.get("message") or fallback), status, err.get("param"), err.get("code"))
    if isinstance(err, str):
        return UpstreamError(err, status)
    return UpstreamError(fallback, status)
