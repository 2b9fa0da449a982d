"""The HTTP surface: routes, auth, errors."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from itsproxy.proxy.config import Config, load_config
from itsproxy.proxy.errors import ApiError
from itsproxy.proxy.http.auth import AuthMiddleware
from itsproxy.proxy.http.chat import ChatSurface
from itsproxy.proxy.http.completions import CompletionsSurface
from itsproxy.proxy.http.embeddings import EmbeddingsSurface
from itsproxy.proxy.http.responses import ResponsesSurface
from itsproxy.proxy.runtime import Services
from itsproxy.proxy.scaling import Scaling
from itsproxy.proxy.surface import Surface
from itsproxy.proxy.telemetry import access_log, dashboard, metrics
from itsproxy.proxy.telemetry.spend_view import budget_endpoint, history_endpoint

log = logging.getLogger("itsproxy")
CONFIG_ENV = "ITSPROXY_CONFIG"


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "itsproxy"}


async def models(request: Request) -> Response:
    services: Services = request.app.state.services
    return JSONResponse({"object": "list", "data": [_model(m) for m in services.router.model_ids()]})


async def model(request: Request) -> Response:
    """One model: any name the router serves (a route alias, a model_list name, a wildcard match)."""
    services: Services = request.app.state.services
    name = request.path_params["model_id"]
    try:
        services.router.resolve(name)
    except ApiError as err:  # 404 in OpenAI's shape when nothing serves it
        metrics.refused(err.status)
        return err.response()
    return JSONResponse(_model(name))


class _Endpoint:
    """A surface's route as a plain ASGI app: Starlette wraps function endpoints in a second
    exception-handling layer per request, which ExceptionMiddleware already provides once."""

    def __init__(self, scaling: Scaling, surface: Surface | Callable[[], Surface]) -> None:
        self.scaling, self.surface = scaling, surface

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        surface = self.surface() if callable(self.surface) else self.surface
        response = await self.scaling.handle(Request(scope, receive, send), surface)
        await response(scope, receive, send)


async def not_found(request: Request, exc: Exception) -> Response:
    metrics.refused(404)
    return ApiError(404, f"no such endpoint: {request.method} {request.url.path}", code="not_found").response()


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    metrics.refused(405)
    return ApiError(405, f"method {request.method} is not allowed here", code="method_not_allowed").response()


async def internal_error(request: Request, exc: Exception) -> Response:
    # Never leak internals (or secrets) to the client; the log gets the type only.
    log.error("unhandled %s on %s", type(exc).__name__, request.url.path)
    return ApiError(500, "internal error in the proxy", code="internal_error").response()


def create_app(config: Config) -> Starlette:
    services = Services(config)
    scaling = Scaling(services)
    drop = config.server.drop_params
    surfaces: list[tuple[str, Surface]] = [("chat/completions", ChatSurface(drop)),
                                           ("completions", CompletionsSurface(drop)),
                                           ("embeddings", EmbeddingsSurface(drop))]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        try:
            await services.start()  # a corrupt state file fails startup here, named
            yield
        finally:
            await services.aclose()

    responses = _Endpoint(scaling, ResponsesSurface)  # one surface per request: it keeps the echo fields
    routes: list[BaseRoute] = [Route(f"{prefix}/{path}", _Endpoint(scaling, surface), methods=["POST"])
                               for path, surface in surfaces for prefix in ("/v1", "")]
    routes += [
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/responses", responses, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", model, methods=["GET"]),
        Route("/models/{model_id:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", dashboard.metrics_endpoint, methods=["GET"]),
        Route("/v1/its/stats", dashboard.stats_endpoint, methods=["GET"]),
        Route("/v1/its/history", history_endpoint(services.history, services.budgets, config.server.api_keys),
              methods=["GET"]),
        Route("/v1/its/budget", budget_endpoint(services.budgets), methods=["GET"]),
        Route("/dashboard", dashboard.dashboard_page, methods=["GET"]),
        Mount("/dashboard/static", app=dashboard.static_app),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: method_not_allowed, Exception: internal_error})
    app.state.services = services
    app.add_middleware(AuthMiddleware, keys=config.server.api_keys, protect_metrics=config.server.protect_metrics)
    return app


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` / multi-worker serving: config path from the environment."""
    if os.environ.get(access_log.LEVEL_ENV):
        access_log.configure(os.environ[access_log.LEVEL_ENV])
    return create_app(load_config(os.environ.get(CONFIG_ENV) or None))
