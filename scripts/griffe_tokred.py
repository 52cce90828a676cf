"""Griffe extensions used by the docs build (``mkdocs.yml``: ``plugins.mkdocstrings.handlers.python.options``).

``PackageDirMapping``
    tokred installs the top-level folders ``strategies/`` and ``schedules/`` as ``tokred.strategies`` and
    ``tokred.schedules`` through setuptools' ``package-dir`` mapping (``pyproject.toml``). Python follows it (the
    editable install's import hook, or the wheel's layout), but griffe, which reads the sources statically, looks for
    ``tokred/strategies/`` on disk and does not find it. This extension reads the same mapping from ``pyproject.toml``
    and, once griffe has loaded ``tokred``, loads each mapped folder and attaches it as a submodule, so
    ``::: tokred.strategies.fastv`` and cross-references to ``tokred.schedules.linear.LinearScheduler`` resolve.

``LazyExports``
    ``tokred`` exports ``patch``, ``PatchHandle`` and ``ReductionStats`` lazily through a module ``__getattr__`` (so
    that ``import tokred`` stays torch-free), which a static reader cannot see. Configured with
    ``{package: source module}``, this extension adds, for every name in the package's ``__all__`` that is not
    defined statically, an alias to the object of the same name in the source module; ``::: tokred.patch`` and
    ``[tokred.patch][]`` then resolve. Names the package defines itself (e.g. behind ``if TYPE_CHECKING:``) are left
    alone.

``DocstringCompat``
    Reads the docstrings the way Napoleon (Sphinx's Google-style parser) does, without touching the sources:

    * ``Example:`` is an examples section, like ``Examples:`` (griffe would render it as a plain admonition, and the
      ``>>>`` lines as prose);
    * Sphinx roles (``:func:`prefill_flops```, ``:class:`TextDims```, ``:data:``, ``:attr:``, ``:meth:``, ``:mod:``,
      ``:exc:``) become cross-references when the name resolves to a public tokred object in the docstring's scope,
      and inline code otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

ROOT = Path(__file__).resolve().parents[1]
FALLBACK = {"tokred.strategies": "strategies", "tokred.schedules": "schedules"}


def package_dir_mapping(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted package: folder}`` for every mapped subpackage in ``[tool.setuptools] package-dir``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: use the mapping tokred ships with
        mapping = FALLBACK
    else:
        with (root / "pyproject.toml").open("rb") as fh:
            mapping = tomllib.load(fh).get("tool", {}).get("setuptools", {}).get("package-dir", FALLBACK)
    return {pkg: root / folder for pkg, folder in mapping.items() if "." in pkg and pkg != folder}


class PackageDirMapping(griffe.Extension):
    """Attach the ``package-dir`` subpackages to their parent package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for dotted, folder in package_dir_mapping().items():
            parent, _, name = dotted.rpartition(".")
            if parent != pkg.path or name in pkg.members:
                continue
            # GriffeLoader has no public "load this folder as that submodule"; _load_module is what it uses for
            # submodules itself (griffelib 2.4). If it changes, the strict docs build fails loudly.
            module = loader._load_module(name, folder / "__init__.py", submodules=True, parent=pkg)
            pkg.set_member(name, module)


class LazyExports(griffe.Extension):
    """Alias names of ``__all__`` that a package provides through a module ``__getattr__`` (see the module docstring).

    Args:
        packages: ``{package: module}``: the module (loaded as part of the package) that defines the lazy names.
    """

    def __init__(self, packages: dict[str, str] | None = None) -> None:
        super().__init__()
        self.packages = packages or {}

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        source = self.packages.get(pkg.path)
        if source is None or pkg.exports is None:
            return
        module = pkg.modules_collection.get_member(source)
        for name in pkg.exports:
            if isinstance(name, str) and name not in pkg.members and name in module.members:
                pkg.set_member(name, griffe.Alias(name, f"{source}.{name}", parent=pkg))


_EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:func|class|data|meth|attr|mod|exc|obj):`~?\.?(?P<name>[\w.]+)(?:\(\))?`")


def _walk(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)  # type: ignore[arg-type]


def _target(obj: griffe.Object, name: str) -> str | None:
    """Full path of ``name`` as seen from ``obj``, if it is a public object of the loaded packages."""
    head, _, rest = name.partition(".")
    try:
        path = obj.resolve(head) if not obj.modules_collection.get_member(head) else head
    except (griffe.NameResolutionError, KeyError, ValueError):
        try:
            path = obj.resolve(head)
        except griffe.NameResolutionError:
            return None
    full = f"{path}.{rest}" if rest else path
    try:
        found = obj.modules_collection.get_member(full)
    except (KeyError, ValueError, AttributeError):
        return None
    if any(part.startswith("_") for part in full.split(".")):
        return None
    if found.is_attribute and not found.docstring and found.parent is not None and found.parent.is_class:
        # Undocumented attributes (dataclass fields listed under "Attributes:") get no anchor: link to the class.
        return found.parent.path
    return full


class DocstringCompat(griffe.Extension):
    """Napoleon-compatible reading of ``Example:`` sections and Sphinx roles (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is None:
                continue
            text = _EXAMPLE.sub(r"\g<indent>Examples:", obj.docstring.value)

            def link(match: re.Match[str], obj: griffe.Object = obj) -> str:
                name = match.group("name")
                target = _target(obj, name)
                return f"[`{name}`][{target}]" if target else f"`{name}`"

            obj.docstring.value = _ROLE.sub(link, text)
