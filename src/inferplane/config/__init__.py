"""Configuration: schema, loader with line-numbered errors, and the embedded default."""

from inferplane.config._load import ConfigError, default_config_text, load_config, parse_config
from inferplane.config._schema import (
    ApiKey,
    Backend,
    Config,
    EngineKind,
    GatewaySettings,
    Model,
    Tenant,
)

__all__ = [
    "ApiKey",
    "Backend",
    "Config",
    "ConfigError",
    "EngineKind",
    "GatewaySettings",
    "Model",
    "Tenant",
    "default_config_text",
    "load_config",
    "parse_config",
]
