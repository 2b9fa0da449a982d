"""Request model name -> Route.

Order: an exact route alias, then a model_list name (passed through
unchanged), then glob routes in file order, then wildcard model_list names
(`openai/*`, in file order; passed through); nothing matches -> 404.
A route alias equal to a model_list name wins (that is how a model gets a
strategy); check-config refuses two routes with the same `match.model`.
"""

from __future__ import annotations

from itsproxy.proxy.config import Config, Limits, Route
from itsproxy.proxy.errors import ApiError


class Router:
    def __init__(self, config: Config) -> None:
        self.exact = {r.match: r for r in config.routes if not r.is_glob}
        self.globs = [r for r in config.routes if r.is_glob]
        self.direct_limits = Limits(max_n=128, timeout_s=config.server.upstream_timeout_s)
        self.direct = {
            name: Route(name=name, match=name, passthrough=True, pipeline=None, target=name, limits=self.direct_limits)
            for name, entry in config.models.items() if not entry.is_wildcard
        }
        self.wildcards = config.wildcards

    def resolve(self, model: str) -> Route:
        route = self.exact.get(model) or self.direct.get(model)
        if route is None:
            route = next((r for r in self.globs if r.matches(model)), None)
        if route is None:
            route = self._wildcard(model)
        if route is None:
            raise ApiError(404, f"The model `{model}` does not exist or is not served by this proxy",
                           param="model", code="model_not_found")
        return route

    def _wildcard(self, model: str) -> Route | None:
        entry = next((m for m in self.wildcards if m.match(model) is not None), None)
        if entry is None:
            return None
        return Route(name=entry.name, match=entry.name, passthrough=True, pipeline=None, target=model,
                     limits=self.direct_limits)

    def model_ids(self) -> list[str]:
        return list(dict.fromkeys([*self.exact, *self.direct]))
