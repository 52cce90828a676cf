"""Plugin manager: loads built-in and third-party plugins and builds the component registries.

Built-ins are registered by module name through the same hooks as third-party plugins, which come from entry points
or, in-process, from ``register_plugin``. Environment switches:

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
from tokred._components import BaseMerger, BaseRouter, BaseScheduler, BaseScorer, Strategy
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
    "tokred.strategies.divprune",
    "tokred.strategies.cdpruner",
    "tokred.strategies.dart",
    "tokred.strategies.vtc_cls",
    "tokred.strategies.visionzip",
    "tokred.strategies.vispruner",
    "tokred.strategies.pyramiddrop",
    "tokred.strategies.fitprune",
    "tokred.strategies.prefixkv",
    "tokred.strategies.evs",
    "tokred.strategies.gamma_mod",
    "tokred.strategies.vidcom2",
    "tokred.adapters",
)


@dataclass
class Registries:
    """Every registry, built once from the loaded plugins."""

    mergers: Registry[type[BaseMerger]]
    scorers: Registry[type[BaseScorer]]
    schedulers: Registry[type[BaseScheduler]]
    routers: Registry[type[BaseRouter]]
    strategies: Registry[type[Strategy]]
    adapters: Registry[type[Any]]

    def by_kind(self, kind: str) -> Registry[Any]:
        """The registry of ``kind`` ("merger", "scorers", ...: singular or plural)."""
        from tokred.errors import UnknownNameError

        key = kind if kind.endswith("s") else kind + "s"
        if key not in ("mergers", "scorers", "schedulers", "routers", "strategies", "adapters"):
            raise UnknownNameError(
                f"Unknown component kind '{kind}'. Available: mergers, scorers, schedulers, routers, strategies, "
                "adapters"
            )
        registry: Registry[Any] = getattr(self, key)
        return registry


_manager: pluggy.PluginManager | None = None
_registries: Registries | None = None


def _env_true(name: str) -> bool:
    from tokred._env import env_flag

    return env_flag(name)


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
        routers=Registry("router", BaseRouter),
        strategies=Registry("strategy", Strategy),
        adapters=Registry("adapter", object),
    )
    hooks = (
        ("tokred_register_mergers", regs.mergers),
        ("tokred_register_scorers", regs.scorers),
        ("tokred_register_schedulers", regs.schedulers),
        ("tokred_register_routers", regs.routers),
        ("tokred_register_strategies", regs.strategies),
        ("tokred_register_adapters", regs.adapters),
    )
    trace = _env_true("TOKRED_TRACE_PLUGINS")
    for hook_name, registry in hooks:
        caller = getattr(pm.hook, hook_name)
        # Each implementation gets its own register callback so that errors name the plugin. get_hookimpls() lists
        # them in load order (pluggy would call them last-registered first), so built-ins register first.
        for impl in caller.get_hookimpls():
            if trace:
                print(f"[tokred] hook {hook_name}: plugin {impl.plugin_name}", file=sys.stderr)
            impl.function(register=_registrar(registry, impl.plugin_name))
    return regs


def _registrar(registry: Registry[Any], plugin_name: str) -> Callable[[Any], None]:
    def register(obj: Any) -> None:
        registry.register(obj, origin=f"plugin '{plugin_name}' ({origin_of(obj)})", plugin=plugin_name)

    return register


def register_plugin(plugin: object, name: str | None = None) -> str | None:
    """Register a plugin in this process and rebuild the registries, so that its components can be used at once.

    An installed package registers through the ``tokred`` entry-point group instead; this is for hook
    implementations that are not packaged, in a script, a notebook or a test. The registration lasts as long as the
    process's plugin manager (``reset_plugins()`` forgets it); other processes, such as the ``tokred`` command line,
    do not see it.

    Args:
        plugin: A module, class or object whose functions marked [`@tokred.hookimpl`][tokred.hookimpl] are named
            after tokred's hooks (e.g. ``sys.modules[__name__]`` for the calling module).
        name: The plugin's name, as ``TOKRED_DISABLED_PLUGINS`` and ``tokred plugins`` know it; default: the module
            name, or an id for other objects.

    Returns:
        The name the plugin was registered under, or ``None`` if ``TOKRED_DISABLED_PLUGINS`` blocks that name.

    Raises:
        RegistrationError: If the plugin or its name is already registered, a function is not a valid
            implementation of the hook it is named after, or a component it registers is refused (a duplicate name
            or a wrong base class). The plugin is not kept then.

    Example:
        >>> import tokred
        >>> class Halving(tokred.BaseScheduler):
        ...     '''Halve the visual tokens at every layer.'''
        ...     name = "halving"
        ...     def _budgets(self, num_layers, num_tokens):
        ...         return [num_tokens >> layer for layer in range(num_layers)]
        >>> class MyPlugin:
        ...     @tokred.hookimpl
        ...     def tokred_register_schedulers(self, register):
        ...         register(Halving)
        >>> tokred.register_plugin(MyPlugin(), name="my-plugin")
        'my-plugin'
        >>> "halving" in tokred.list_components("schedulers")
        True
    """
    from tokred.errors import RegistrationError

    global _registries
    pm = get_plugin_manager()
    if pm.is_registered(plugin):
        raise RegistrationError(f"plugin {plugin!r} is already registered, as {pm.get_name(plugin)!r}")
    if name is not None and pm.has_plugin(name):
        raise RegistrationError(f"a plugin named {name!r} is already registered ({pm.get_plugin(name)!r})")
    try:
        registered = pm.register(plugin, name=name)
    except pluggy.PluginValidationError as err:
        raise RegistrationError(f"cannot register plugin {name or plugin!r}: {err}") from err
    if registered is None:
        return None
    try:  # validate now, so that a bad plugin fails here and is not kept
        pm.check_pending()  # a @hookimpl whose name matches no tokred hook
        registries = build_registries(pm)
    except pluggy.PluginValidationError as err:
        pm.unregister(plugin)
        raise RegistrationError(f"cannot register plugin {registered!r}: {err}") from err
    except BaseException:
        pm.unregister(plugin)
        raise
    _registries = registries
    return registered


def reset_plugins() -> None:
    """Forget the plugin manager and registries, plugins registered in-process included (tests, or after installing
    a plugin package in-process)."""
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


def disabled_by_switch(kind: str, name: str) -> str | None:
    """The plugin blocked by ``TOKRED_DISABLED_PLUGINS`` that would have registered ``name`` of ``kind``, if any.

    Only blocked plugins are looked at (built-in modules, or entry points of the ``tokred`` group), so this costs
    nothing when the switch is unset.
    """
    blocked = [n.strip() for n in os.environ.get("TOKRED_DISABLED_PLUGINS", "").split(",") if n.strip()]
    key = kind if kind.endswith("s") else kind + "s"
    for plugin_name in blocked:
        module = _blocked_module(plugin_name)
        hook = getattr(module, f"tokred_register_{key}", None) if module is not None else None
        if hook is None:
            continue
        found: list[str] = []
        try:
            hook(register=lambda obj, found=found: found.append(getattr(obj, "name", "")))
        except Exception:  # noqa: BLE001 - a broken disabled plugin simply gives no hint
            continue
        if name in found:
            return plugin_name
    return None


def _blocked_module(plugin_name: str) -> Any:
    if plugin_name in DEFAULT_PLUGINS:
        return importlib.import_module(plugin_name)
    from importlib.metadata import entry_points

    for ep in entry_points(group=hookspecs.PROJECT):
        if ep.name == plugin_name:
            try:
                return ep.load()
            except Exception:  # noqa: BLE001
                return None
    return None
