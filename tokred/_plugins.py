"""Plugin manager: loads built-in and third-party plugins and builds the component registries.

Built-ins are registered by module name through the same hooks as third-party plugins. Environment switches:

* ``TOKRED_DISABLE_PLUGIN_AUTOLOAD=1``: do not load entry points of the ``tokred`` group (built-ins still load);
* ``TOKRED_DISABLED_PLUGINS=a,b``: block these plugin names (entry-point names or built-in module names);
* ``TOKRED_TRACE_PLUGINS=1``: print every hook call and its result to stderr.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

from tokred import hookspecs
from tokred._components import BaseMerger, BaseScheduler, BaseScorer, Strategy
from tokred._registry import Registry, origin_of

DEFAULT_PLUGINS: tuple[str, ...] = (
    "tokred.schedules.constant",
    "tokred.schedules.one_shot",
    "tokred.schedules.linear",
    "tokred.schedules.tome",
    "tokred.schedules.pyramid",
    "tokred.strategies.none",
    "tokred.strategies.aim",
    "tokred.strategies.fastv",
    "tokred.strategies.tome",
    "tokred.strategies.random",
    "tokred.strategies.pooling",
    "tokred.adapters",
)

_TRUE = {"1", "true", "yes", "on"}


@dataclass
class Registries:
    """Every registry, built once from the loaded plugins."""

    mergers: Registry[type[BaseMerger]]
    scorers: Registry[type[BaseScorer]]
    schedulers: Registry[type[BaseScheduler]]
    strategies: Registry[type[Strategy]]
    adapters: Registry[type[Any]]

    def by_kind(self, kind: str) -> Registry[Any]:
        """The registry of ``kind`` ("merger", "scorers", ...: singular or plural)."""
        from tokred.errors import UnknownNameError

        key = kind if kind.endswith("s") else kind + "s"
        if key not in ("mergers", "scorers", "schedulers", "strategies", "adapters"):
            raise UnknownNameError(
                f"Unknown component kind '{kind}'. Available: mergers, scorers, schedulers, strategies, adapters"
            )
        registry: Registry[Any] = getattr(self, key)
        return registry


_manager: pluggy.PluginManager | None = None
_registries: Registries | None = None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _trace(hook_name: str, hook_impls: Any, kwargs: Any) -> None:
    print(f"[tokred] hook {hook_name}: {[impl.plugin_name for impl in hook_impls]}", file=sys.stderr)


def _trace_after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
    print(f"[tokred] hook {hook_name} -> {outcome.get_result()!r}", file=sys.stderr)


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created on first use (no import-time side effects)."""
    global _manager
    if _manager is not None:
        return _manager
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = [n.strip() for n in os.environ.get("TOKRED_DISABLED_PLUGINS", "").split(",") if n.strip()]
    for name in blocked:
        pm.set_blocked(name)
    if _env_true("TOKRED_TRACE_PLUGINS"):
        pm.add_hookcall_monitoring(_trace, _trace_after)
    if not _env_true("TOKRED_DISABLE_PLUGIN_AUTOLOAD"):
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for module_name in DEFAULT_PLUGINS:
        if pm.is_blocked(module_name):
            continue
        pm.register(importlib.import_module(module_name), name=module_name)
    pm.check_pending()
    _manager = pm
    return pm


def get_registries() -> Registries:
    """Build (once) and return the registries from every loaded plugin."""
    global _registries
    if _registries is None:
        _registries = build_registries(get_plugin_manager())
    return _registries


def build_registries(pm: pluggy.PluginManager) -> Registries:
    """Call every registration hook of ``pm`` and collect the results."""
    regs = Registries(
        mergers=Registry("merger", BaseMerger),
        scorers=Registry("scorer", BaseScorer),
        schedulers=Registry("scheduler", BaseScheduler),
        strategies=Registry("strategy", Strategy),
        adapters=Registry("adapter", object),
    )
    hooks = (
        ("tokred_register_mergers", regs.mergers),
        ("tokred_register_scorers", regs.scorers),
        ("tokred_register_schedulers", regs.schedulers),
        ("tokred_register_strategies", regs.strategies),
        ("tokred_register_adapters", regs.adapters),
    )
    trace = _env_true("TOKRED_TRACE_PLUGINS")
    for hook_name, registry in hooks:
        caller = getattr(pm.hook, hook_name)
        # Each implementation gets its own register callback so that errors name the plugin; pluggy would call
        # them last-registered first, so walk them in load order instead.
        for impl in reversed(caller.get_hookimpls()):
            if trace:
                print(f"[tokred] hook {hook_name}: plugin {impl.plugin_name}", file=sys.stderr)
            impl.function(register=_registrar(registry, impl.plugin_name))
    return regs


def _registrar(registry: Registry[Any], plugin_name: str) -> Callable[[Any], None]:
    def register(obj: Any) -> None:
        registry.register(obj, origin=f"plugin '{plugin_name}' ({origin_of(obj)})", plugin=plugin_name)

    return register


def reset_plugins() -> None:
    """Forget the plugin manager and registries (tests, or after installing a plugin in-process)."""
    global _manager, _registries
    _manager = None
    _registries = None


def plugin_distributions() -> list[dict[str, Any]]:
    """Loaded plugins: name, distribution and version (for entry points) and the hooks each implements."""
    pm = get_plugin_manager()
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append(
            {
                "name": name,
                "builtin": name in DEFAULT_PLUGINS,
                "distribution": dist.project_name if dist is not None else "tokred",
                "version": dist.version if dist is not None else _own_version(),
                "hooks": hooks,
            }
        )
    return rows


def _own_version() -> str:
    from tokred import __version__

    return __version__
