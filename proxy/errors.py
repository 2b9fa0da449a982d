"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from itsproxy.proxy.redact import Redactor

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
         429: "rate_limit_error", 502: "upstream_error", 503: "service_unavailable", 504: "timeout_error"}


class ApiError(Exception):
    """An error the client sees. `retry` sets x-should-retry: the openai SDK
    retries 5xx twice by default, and on a scaling route each retry re-spends
    every sample, so most errors say false."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None, retry: bool = False, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        self.retry = retry
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        err = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        err.update(self.extra)
        return {"error": err}

    def redacted(self, redactor: Redactor) -> ApiError:
        """A copy whose message, param, code and extra fields pass through the redactor."""
        return ApiError(self.status, redactor(self.message), code=redactor.optional(self.code),
                        param=redactor.optional(self.param), type=self.type, retry=self.retry,
                        headers=self.headers, extra=redactor.value(self.extra))

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        h = {"x-should-retry": "true" if self.retry else "false", **self.headers, **(headers or {})}
        return JSONResponse(self.body(), status_code=self.status, headers=h)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def redact(text: str, secrets: list[str]) -> str:
    """Compatibility for callers holding a list of secrets; prefer `Services`/`Config.redactor`."""
    return Redactor(secrets)(text)

