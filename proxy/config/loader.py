"""Reading config.yaml and parsing ALL of it, once, before anything starts.

Order: read the file (UTF-8, else a clear error), parse YAML (a syntax error names
file, line and column but never echoes the line: it may hold an API key; a key
written twice in one mapping is refused, not silently overwritten), resolve every
`os.environ/` reference and refuse NaN/infinite numbers (config/env.py), then hand
each top-level section to its parser. The result, `Config`, holds settings only:
the running proxy builds its live resources (clients, stores, writers) from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from itsproxy.proxy.config.budgets import BudgetConfig, parse_budgets
from itsproxy.proxy.config.env import resolve_document
from itsproxy.proxy.config.litellm import merge_server
from itsproxy.proxy.config.model_list import ModelEntry, parse_model_list
from itsproxy.proxy.config.routes import Route, check_continuation, parse_routes
from itsproxy.proxy.config.server import RouterSettings, ServerConfig, parse_router, parse_server
from itsproxy.proxy.config.simulator import SimulatorSettings, parse_simulator
from itsproxy.proxy.config.traces import TraceSettings, parse_traces
from itsproxy.proxy.config_fields import ConfigError, mapping
from itsproxy.proxy.redact import Redactor, install

DEFAULT_CONFIG = "default_config.yaml"
TOP_KEYS = {"model_list", "routes", "server", "simulator", "traces", "budgets", "general_settings",
            "litellm_settings", "router_settings"}


@dataclass
class Config:
    models: dict[str, ModelEntry]
    routes: list[Route]
    server: ServerConfig
    router: RouterSettings = field(default_factory=RouterSettings)
    budgets: BudgetConfig | None = None
    traces: TraceSettings | None = None
    simulator: SimulatorSettings | None = None
    source: str = "<memory>"
    redactor: Redactor = field(default_factory=Redactor)  # set by parse_config: knows every secret above

    @property
    def secrets(self) -> list[str]:
        return list(self.redactor.secrets)

    @property
    def wildcards(self) -> list[ModelEntry]:
        return [m for m in self.models.values() if m.is_wildcard]

    def model(self, name: str) -> ModelEntry | None:
        """The entry serving `name`: an exact model_name, else the first wildcard (file order) matching it."""
        entry = self.models.get(name)
        if entry is not None and not entry.is_wildcard:
            return entry
        for wildcard in self.wildcards:
            concrete = wildcard.concrete(name)
            if concrete is not None:
                return concrete
        return None


def _check_reachable(models: dict[str, ModelEntry], routes: list[Route]) -> None:
    catch_all = next((i for i, r in enumerate(routes) if r.match == "*"), None)
    wildcard = next((i for i, m in enumerate(models.values()) if m.is_wildcard), None)
    if catch_all is not None and wildcard is not None:
        name = list(models)[wildcard]
        raise ConfigError(f"routes[{catch_all}].match.model", f"'*' catches every name before the model_list "
                          f"wildcard {name!r} is tried (route globs come first); drop one of them")


def parse_config(data: Any, source: str = "<memory>") -> Config:
    data = resolve_document(mapping(data, "", TOP_KEYS))
    models = parse_model_list(data.get("model_list"))
    routes = parse_routes(data.get("routes"), {n for n, m in models.items() if not m.is_wildcard})
    _check_reachable(models, routes)
    check_continuation(routes, {n: m.mode for n, m in models.items() if not m.is_wildcard})
    server = merge_server(data.get("server"), data.get("general_settings"), data.get("litellm_settings"),
                          data.get("router_settings"))
    config = Config(
        models=models,
        routes=routes,
        server=parse_server(server),
        router=parse_router(data.get("router_settings")),
        budgets=parse_budgets(data.get("budgets")),
        traces=parse_traces(data.get("traces")),
        simulator=parse_simulator(data.get("simulator")),
        source=source,
    )
    if config.server.state.backend == "redis" and config.budgets is not None and config.budgets.path:
        raise ConfigError("budgets.path", "is the SQLite file; with server.state.backend redis budgets live in Redis")
    config.redactor = install(config)
    return config


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:  # the key itself is not named: it may be an API key (budgets.keys)
                    raise yaml.constructor.ConstructorError(
                        None, None, "a key is written twice in this mapping", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document; errors say where (file:line:column) and what, never quote the source."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError("", f"{where}: not valid YAML: {exc.problem or exc.context or 'syntax error'}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{source}: not valid YAML ({type(exc).__name__})") from None


def read_document(path: str) -> Any:
    """The parsed (not yet validated) YAML document at `path`."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError("", f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                          "save the file as UTF-8") from None
    return parse_yaml(text, path)


def load_config(path: str | None = None) -> Config:
    """Load `path`, or the default config shipped in the package (offline demo)."""
    if path is None:
        text = resources.files("itsproxy.proxy").joinpath(DEFAULT_CONFIG).read_text(encoding="utf-8")
        source = f"<package>/{DEFAULT_CONFIG}"
        return parse_config(parse_yaml(text, source), source)
    return parse_config(read_document(path), path)
