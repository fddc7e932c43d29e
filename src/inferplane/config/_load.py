"""Load the YAML configuration; errors name the file, line and key that is wrong."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from inferplane.config._schema import Config

__all__ = [
    "ConfigError",
    "default_config_text",
    "load_config",
    "load_yaml",
    "parse_config",
    "parse_yaml",
]

Path_ = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """One readable line per problem: ``file:line: key.path: what is wrong``."""


def default_config_text() -> str:
    return resources.files("inferplane.config").joinpath("default.yaml").read_text()


def load_config(path: str | Path | None = None) -> Config:
    """The config at ``path``, or the embedded default when ``path`` is None."""
    if path is None:
        return parse_config(default_config_text(), "<default>")
    return load_yaml(Path(path), Config, what="config")


def load_yaml(
    path: Path, schema: type[M], *, what: str, context: dict[str, Any] | None = None
) -> M:
    """The file at ``path`` validated as ``schema`` (a config, a scenario, a plan)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from exc
    return parse_yaml(text, schema, str(path), what=what, context=context)


def parse_config(text: str, source: str = "<config>") -> Config:
    return parse_yaml(text, Config, source, what="config")


def parse_yaml(
    text: str, schema: type[M], source: str, *, what: str, context: dict[str, Any] | None = None
) -> M:
    """``text`` validated as ``schema`` (``context`` goes to its validators); errors read
    ``source:line: key.path: message``."""
    lines: dict[Path_, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
    try:
        data = {} if node is None else _construct(node, (), lines)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the {what} must be a mapping of keys")
    try:
        return schema.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(
            "\n".join(_describe(err, source, lines) for err in exc.errors())
        ) from None


def _construct(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> Any:
    """Plain Python data from a YAML node, remembering the line of every key path."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader(b"").construct_object(key_node)
            if key in out:
                where = ".".join(map(str, path)) or "top level"
                raise ConfigError(f"{key_node.start_mark.line + 1}: {where}: duplicate key {key!r}")
            out[key] = _construct(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return yaml.SafeLoader(b"").construct_object(node)


def _describe(err: Any, source: str, lines: dict[Path_, int]) -> str:
    loc: Path_ = tuple(
        p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function"))
    )
    line = 1
    for i in range(len(loc), -1, -1):
        if loc[:i] in lines:
            line = lines[loc[:i]]
            break
    key = ".".join(str(p) for p in loc) or "top level"
    message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    message = message.removeprefix("Value error, ")
    return f"{source}:{line}: {key}: {message}"
