"""Registry-backed public functions: ``list_*`` and ``create_*`` (timm / lm-eval style)."""

from __future__ import annotations

from typing import Any

from tokred._components import BaseComponent, Strategy
from tokred._plugins import get_registries


def list_strategies(pattern: str = "*") -> list[str]:
    """Names of the registered strategies matching a shell-style ``pattern``, sorted.

    Example:
        >>> import tokred
        >>> tokred.list_strategies("aim*")
        ['aim', 'aim-merge', 'aim-prune']
    """
    return get_registries().strategies.names(pattern)


def list_components(kind: str, pattern: str = "*") -> list[str]:
    """Names of registered components of ``kind``: ``"mergers"``, ``"scorers"``, ``"schedulers"``, ``"strategies"``
    or ``"adapters"`` (singular works too).

    Raises:
        UnknownNameError: For an unknown kind.
    """
    return get_registries().by_kind(kind).names(pattern)


def get_strategy_class(name: str) -> type[Strategy]:
    """The registered strategy class called ``name``.

    Raises:
        UnknownNameError: With close matches ("did you mean") and the available names.
    """
    from tokred.errors import UnknownNameError

    if not isinstance(name, str):
        raise UnknownNameError(
            f"a strategy name must be a string, got {name!r}; see tokred.list_strategies() for the names"
        )
    try:
        return get_registries().strategies.get(name)
    except UnknownNameError as err:
        from tokred._plugins import disabled_by_switch

        plugin = disabled_by_switch("strategies", name)
        if plugin is not None:
            raise UnknownNameError(
                f"strategy '{name}' comes from plugin '{plugin}', which TOKRED_DISABLED_PLUGINS disables; remove it "
                "from that switch to use it"
            ) from None
        raise err from None


def create_strategy(name: str | Strategy, **options: Any) -> Strategy:
    """Create a configured strategy by name.

    Args:
        name: A registered strategy name (see [`list_strategies`][tokred.list_strategies]) or a ready
            [`Strategy`][tokred.Strategy] (returned as is; options are then not allowed).
        **options: Validated by the strategy's ``Config``.

    Returns:
        The strategy with its merger, scorer and scheduler built.

    Raises:
        UnknownNameError: For an unknown name (with "did you mean" and the available names).
        ConfigError: For an unknown or out-of-range option.

    Example:
        >>> import tokred
        >>> tokred.create_strategy("fastV")
        Traceback (most recent call last):
        ...
        tokred.errors.UnknownNameError: Unknown strategy 'fastV'. Did you mean: fastv? Available: ...
    """
    if name is None or not isinstance(name, (str, Strategy)):
        from tokred.errors import ConfigError

        raise ConfigError(
            f"create_strategy() needs a strategy name or a Strategy, got {name!r}; see tokred.list_strategies()"
        )
    if isinstance(name, Strategy):
        if options:
            from tokred.errors import ConfigError

            raise ConfigError("options cannot be applied to a ready Strategy instance; create it with them instead")
        return name
    return get_strategy_class(name)(**options)


def create_component(kind: str, name: str, **options: Any) -> BaseComponent:
    """Create a merger, scorer, scheduler or strategy by kind and name.

    Example:
        >>> import tokred
        >>> tokred.create_component("scheduler", "linear").budgets(28, 8)[12:24]
        [8, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0]
    """
    cls = get_registries().by_kind(kind).get(name)
    return cls(**options)
