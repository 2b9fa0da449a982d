"""What a backend promises, and the errors it raises."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, Protocol

from itsproxy.proxy.config import Deployment
from itsproxy.strategies.types import SampleError

if TYPE_CHECKING:  # replies.py imports this module's errors
    from itsproxy.proxy.upstream.replies import Wire

# Providers say "n is not supported" in many ways.
_N_ERROR = re.compile(
    r"(\bn\b\s*(>|>=|=|must|should|is not|not supported|greater|only|cannot|can't))|(['\"`]n['\"`])"
    r"|(parameter\s+n\b)|(\bn\s+parameter)|(multiple (choices|completions|candidates))",
    re.IGNORECASE,
)


RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class UpstreamError(SampleError):
    """An upstream call failed. `status` is the upstream's HTTP status when it answered;
    `retry_after` (seconds) is what its `Retry-After` header asked for, when it sent one."""

    def __init__(self, message: str, status: int | None = None, param: str | None = None,
                 code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param if isinstance(param, str) else None  # providers' fields, typed here once
        self.code = code if isinstance(code, str) else None
        self.retry_after = retry_after

    @property
    def rejected(self) -> bool:
        """The upstream refused the request itself (the client's fault, not worth retrying)."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in (408, 409, 429)

    @property
    def about_n(self) -> bool:
        if not self.rejected:
            return False
        return self.param == "n" or bool(_N_ERROR.search(self.message))


def retryable(exc: UpstreamError) -> bool:
    """Worth another try (here or at another deployment): no answer at all (connect
    failure, timeout) or a transient status."""
    return exc.status is None or exc.status in RETRY_STATUS


class UpstreamProtocolError(UpstreamError):
    """The upstream answered (HTTP 2xx), but not with a valid chat completion or event stream:
    a malformed reply or chunk, a non-SSE answer to a stream request, a truncated stream, a
    body over the size cap. Always 502. The upstream has read the prompt, so the call is
    metered (estimated where the reply gives no valid `usage`); `usage` is the reply's own
    usage when that part was valid."""

    def __init__(self, message: str, code: str = "upstream_protocol_error",
                 usage: dict[str, Any] | None = None, answered: bool = True) -> None:
        super().__init__(message, 502, code=code)
        self.usage = usage
        self.answered = answered  # False: not a model's answer at all (HTML, not JSON): nothing to meter


class UpstreamBusy(UpstreamError):
    """The proxy's own cap on concurrent upstream calls stayed full too long."""


class Backend(Protocol):
    # `timeout` bounds each phase of one attempt; `deadline` (event-loop time) bounds retries and their waits.
    async def complete(self, entry: Deployment, body: dict[str, Any], timeout: float,
                       deadline: float | None = None, wire: Wire = ...) -> dict[str, Any]: ...

    def stream(self, entry: Deployment, body: dict[str, Any], timeout: float,
               deadline: float | None = None, wire: Wire = ...) -> AsyncGenerator[dict[str, Any], None]: ...

    async def aclose(self) -> None: ...


def error_from_body(status: int, payload: Any, fallback: str, retry_after: float | None = None) -> UpstreamError:
    err = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(err, dict):
        return UpstreamError(str(err.get("message") or fallback), status, err.get("param"), err.get("code"),
                             retry_after)
    if isinstance(err, str):
        return UpstreamError(err, status, retry_after=retry_after)
    return UpstreamError(fallback, status, retry_after=retry_after)
