"""The plugin hooks of tokred (pluggy project name and entry-point group: ``tokred``).

A plugin is a module or object with functions marked ``@tokred.hookimpl`` whose names match the specs below.
Publish it through an entry point in your ``pyproject.toml``::

    [project.entry-points.tokred]
    my_scorer = "tokred_my_scorer"

The built-in mergers, scorers, schedulers, routers, strategies and adapters are registered through exactly these hooks.
Registration hooks receive a ``register`` callback rather than returning objects, so that collisions are detected
(and reported with both origins) by tokred itself.

Example:
    >>> import tokred
    >>> class MyScorer(tokred.BaseScorer):
    ...     '''Keep the tokens with the largest feature norm.'''
    ...     name = "my-norm"
    ...     def score(self, ctx):
    ...         return ctx.features.norm(dim=-1)
    >>> @tokred.hookimpl
    ... def tokred_register_scorers(register):
    ...     register(MyScorer)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from tokred._components import BaseMerger, BaseRouter, BaseScheduler, BaseScorer, Strategy

PROJECT = "tokred"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def tokred_register_mergers(register: Callable[[type[BaseMerger]], None]) -> None:
    """Register merger classes.

    Called once when the registries are first built. Call ``register(cls)`` for every
    [`BaseMerger`][tokred.BaseMerger] subclass the plugin provides; ``cls.name`` must be unique across all plugins.

    Args:
        register: Adds one merger class; raises ``RegistrationError`` on a duplicate name or a wrong base class.
    """


@hookspec
def tokred_register_scorers(register: Callable[[type[BaseScorer]], None]) -> None:
    """Register scorer classes.

    Called once when the registries are first built. Call ``register(cls)`` for every
    [`BaseScorer`][tokred.BaseScorer] subclass the plugin provides.

    Args:
        register: Adds one scorer class; raises ``RegistrationError`` on a duplicate name or a wrong base class.
    """


@hookspec
def tokred_register_schedulers(register: Callable[[type[BaseScheduler]], None]) -> None:
    """Register scheduler classes.

    Called once when the registries are first built. Call ``register(cls)`` for every
    [`BaseScheduler`][tokred.BaseScheduler] subclass the plugin provides.

    Args:
        register: Adds one scheduler class; raises ``RegistrationError`` on a duplicate name or a wrong base class.
    """


@hookspec
def tokred_register_routers(register: Callable[[type[BaseRouter]], None]) -> None:
    """Register router classes (Mixture-of-Depths token routing, e.g. gamma-MoD's shared router).

    Called once when the registries are first built. Call ``register(cls)`` for every
    [`BaseRouter`][tokred.BaseRouter] subclass the plugin provides.

    Args:
        register: Adds one router class; raises ``RegistrationError`` on a duplicate name or a wrong base class.
    """


@hookspec
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    """Register strategy classes (what users name on the command line).

    Called once when the registries are first built. Call ``register(cls)`` for every
    [`Strategy`][tokred.Strategy] subclass the plugin provides.

    Args:
        register: Adds one strategy class; raises ``RegistrationError`` on a duplicate name or a wrong base class.
    """


@hookspec
def tokred_register_adapters(register: Callable[[type[Any]], None]) -> None:
    """Register model adapter classes (one per model family; see ``tokred.adapters``).

    Called once when the registries are first built. An adapter class has a unique ``name``, a ``families``
    description and a ``matches(model) -> bool`` class method. Their names appear in the error raised for an
    unsupported model.

    Args:
        register: Adds one adapter class.
    """


@hookspec(firstresult=True)
def tokred_model_adapter(model: Any, adapters: Sequence[type[Any]]) -> type[Any] | None:
    """Pick the adapter class for ``model``; the first non-``None`` result wins.

    Called by [`tokred.patch`][tokred.patch] for every model it instruments. The built-in implementation runs last
    (``trylast``) and returns the first registered adapter whose ``matches(model)`` is true, family adapters before
    the generic one. Implement this hook to force an adapter for a model class of your own.

    Args:
        model: The model about to be patched.
        adapters: Every registered adapter class, in registration order.

    Returns:
        An adapter class, or ``None`` to let other implementations decide.
    """
