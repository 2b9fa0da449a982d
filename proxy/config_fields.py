"""Small helpers for validating loaded YAML with messages that name the key path.

Kept outside the `config` package on purpose: section parsers that live beside
their runtime code can use them without importing the loader."""

from __future__ import annotations

import math
from typing import Any, Literal, overload


class ConfigError(ValueError):
    """The config is wrong; the message starts with the offending key path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


def mapping(value: Any, path: str, allowed: set[str] | None = None) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(path, f"must be a mapping, got {type(value).__name__}")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise ConfigError(f"{path}.{key}", f"unknown key (known: {known})")
    return value


def seq(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(path, f"must be a list, got {type(value).__name__}")
    return value


@overload
def string(value: Any, path: str, *, required: Literal[True] = True) -> str: ...
@overload
def string(value: Any, path: str, *, required: bool) -> str | None: ...
def string(value: Any, path: str, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(path, "must be a non-empty string")
    return value


@overload
def integer(value: Any, path: str, *, default: int, minimum: int = 0) -> int: ...
@overload
def integer(value: Any, path: str, *, default: None = None, minimum: int = 0) -> int | None: ...
def integer(value: Any, path: str, *, default: int | None = None, minimum: int = 0) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(path, f"must be >= {minimum}, got {value}")
    return value


@overload
def number(value: Any, path: str, *, default: float, minimum: float = 0.0, maximum: float | None = None,
           exclusive_min: bool = False) -> float: ...
@overload
def number(value: Any, path: str, *, default: None = None, minimum: float = 0.0, maximum: float | None = None,
           exclusive_min: bool = False) -> float | None: ...
def number(
    value: Any, path: str, *, default: float | None = None, minimum: float = 0.0,
    maximum: float | None = None, exclusive_min: bool = False,
) -> float | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(path, f"must be a finite number, got {value}")
    if value < minimum or (exclusive_min and value == minimum):
        raise ConfigError(path, f"must be {'>' if exclusive_min else '>='} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(path, f"must be <= {maximum}, got {value}")
    return float(value)


def boolean(value: Any, path: str, *, default: bool = False) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(path, f"must be true or false, got {value!r}")
    return value


def choice(value: Any, path: str, options: tuple[str, ...], *, default: str) -> str:
    if value is None:
        return default
    if value not in options:
        raise ConfigError(path, f"must be one of {', '.join(options)}, got {value!r}")
    return value
