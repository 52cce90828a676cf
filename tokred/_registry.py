"""Typed name -> class registries with collision and "did you mean" errors.

Example:
    >>> reg = Registry("scheduler", base=object)
    >>> class Constant: name = "constant"
    >>> reg.register(Constant, origin="example")
    >>> reg.get("constnt")
    Traceback (most recent call last):
    ...
    tokred.errors.UnknownNameError: Unknown scheduler 'constnt'. Did you mean: constant? Available: constant
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator
from fnmatch import fnmatch
from typing import Any, Generic, TypeVar

from tokred.errors import RegistrationError, UnknownNameError

T = TypeVar("T")


def origin_of(obj: Any) -> str:
    """``module:qualname (file:line)`` of a class or function, for error messages."""
    module = getattr(obj, "__module__", "?")
    qualname = getattr(obj, "__qualname__", type(obj).__qualname__)
    try:
        file = inspect.getsourcefile(obj) or "?"
        line = inspect.getsourcelines(obj)[1]
        return f"{module}:{qualname} ({file}:{line})"
    except (TypeError, OSError):
        return f"{module}:{qualname}"


class Registry(Generic[T]):
    """Maps unique names to registered objects of one kind.

    Args:
        kind: Human name of the kind ("merger", "strategy", ...), used in messages.
        base: Every registered object must be a subclass of this class.
    """

    def __init__(self, kind: str, base: type) -> None:
        self.kind = kind
        self.base = base
        self._items: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._plugins: dict[str, str] = {}

    def register(self, obj: T, *, origin: str | None = None, plugin: str = "") -> None:
        """Add ``obj`` under its ``name`` attribute.

        Raises:
            RegistrationError: If ``obj`` has no name, is not a subclass of the registry's base, or its name is taken
                (the message names both origins).
        """
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise RegistrationError(f"cannot register {origin_of(obj)} as a {self.kind}: it has no 'name'")
        if not (inspect.isclass(obj) and issubclass(obj, self.base)):
            raise RegistrationError(
                f"cannot register {origin_of(obj)} as a {self.kind}: it must subclass {self.base.__qualname__}"
            )
        where = origin or origin_of(obj)
        if name in self._items:
            raise RegistrationError(
                f"duplicate {self.kind} name '{name}': registered by {self._origins[name]} and again by {where}"
            )
        self._items[name] = obj
        self._origins[name] = where
        self._plugins[name] = plugin

    def get(self, name: str) -> T:
        """The object registered as ``name``; unknown names raise with suggestions."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """The error text for an unknown ``name``: close matches (case-insensitive) and the available names."""
        names = sorted(self._items)
        lowered = {n.lower(): n for n in names}
        close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(lowered[c] for c in close)}?" if close else ""
        return f"Unknown {self.kind} '{name}'.{hint} Available: {', '.join(names) or '(none)'}"

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted."""
        return sorted(n for n in self._items if fnmatch(n, pattern))

    def origin(self, name: str) -> str:
        """Where ``name`` was registered."""
        self.get(name)
        return self._origins[name]

    def plugin(self, name: str) -> str:
        """The plugin (module or distribution) that registered ``name``."""
        self.get(name)
        return self._plugins[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
