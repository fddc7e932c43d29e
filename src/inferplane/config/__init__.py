"""Configuration: schema, loader with line-numbered errors, and the embedded default."""

from inferplane.config._load import (
    ConfigError,
    default_config_text,
    load_config,
    load_yaml,
    parse_config,
    parse_yaml,
)
from inferplane.config._schema import (
    RUN_ID,
    ApiKey,
    Backend,
    Budget,
    Config,
    EngineKind,
    GatewaySettings,
    Model,
    Pricing,
    PricingMode,
    RunId,
    SloClass,
    Strict,
    Tenant,
)

__all__ = [
    "RUN_ID",
    "ApiKey",
    "Backend",
    "Budget",
    "Config",
    "ConfigError",
    "EngineKind",
    "GatewaySettings",
    "Model",
    "Pricing",
    "PricingMode",
    "RunId",
    "SloClass",
    "Strict",
    "Tenant",
    "default_config_text",
    "load_config",
    "load_yaml",
    "parse_config",
    "parse_yaml",
]
