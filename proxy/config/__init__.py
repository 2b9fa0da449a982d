"""config.yaml, parsed whole at load into typed settings.

    loader.py      read the file, YAML, resolve os.environ/, hand each section to its parser -> Config
    env.py         os.environ/NAME references (the one resolver) and the NaN/inf refusal
    model_list.py  models, their deployments, wildcard names
    routes.py      routes (strategies/ builds each pipeline)
    server.py      server: and router_settings:
    litellm.py     general_settings / litellm_settings, translated into server: settings
    budgets.py, traces.py, simulator.py   the other sections
Field validators (messages that name the key path) are in proxy/config_fields.py.
"""

from itsproxy.proxy.config.env import ENV_PREFIX, env_ref, resolve_document
from itsproxy.proxy.config.loader import Config, load_config, parse_config, read_document
from itsproxy.proxy.config.model_list import Deployment, ModelEntry
from itsproxy.proxy.config.routes import Limits, Route
from itsproxy.proxy.config.server import RouterSettings, ServerConfig
from itsproxy.proxy.config_fields import ConfigError

__all__ = [
    "ENV_PREFIX", "Config", "ConfigError", "Deployment", "Limits", "ModelEntry", "Route", "RouterSettings",
    "ServerConfig", "env_ref", "load_config", "parse_config", "read_document", "resolve_document",
]
