"""Parsing of ``-o key=value`` options shared by the commands."""

from __future__ import annotations

import json
from typing import Any

from tokred.errors import ConfigError


def parse_value(text: str) -> Any:
    """Interpret an option value: JSON literals (numbers, true/false/null, lists), else the raw string."""
    lowered = text.strip()
    if lowered.lower() in ("none", "null"):
        return None
    if lowered.lower() in ("true", "false"):
        return lowered.lower() == "true"
    try:
        value = json.loads(lowered)
    except json.JSONDecodeError:
        return text
    return tuple(value) if isinstance(value, list) else value


def parse_options(items: list[str] | None, strategies: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Parse ``name.key=value`` (or ``key=value`` when a single strategy is named) into per-strategy options.

    Args:
        items: Raw ``-o`` arguments.
        strategies: Strategy names in the command; ``key=value`` without a prefix applies to the only one.

    Returns:
        ``{strategy_name: {key: value}}``.

    Raises:
        ConfigError: For a malformed item, an unprefixed key with several strategies, or the same option twice.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"option '{item}' must look like key=value or strategy.key=value")
        key, value = item.split("=", 1)
        if "." in key:
            name, key = key.rsplit(".", 1)
        elif strategies is not None and len(strategies) == 1:
            name = strategies[0]
        else:
            raise ConfigError(f"option '{item}': say which strategy it is for, e.g. -o fastv.{key}={value}")
        if strategies is not None and name not in strategies:
            raise ConfigError(f"option '{item}' is for '{name}', which is not among the strategies {strategies}")
        key = key.strip()
        if not key:
            raise ConfigError(f"option '{item}' has no key; use key=value or strategy.key=value")
        if key in out.get(name, {}):
            raise ConfigError(f"option {name}.{key} is given twice (-o {item}); give each option once")
        out.setdefault(name, {})[key] = parse_value(value)
    return out
