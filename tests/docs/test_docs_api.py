"""The API reference covers every public name, and the hooks reference every hook."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re

import pytest
from docs_helpers import DOCS, ROOT, api_blocks, rendered

import tokred
import tokred.hookspecs

# Modules whose public names (``__all__``) must all be rendered on a reference page, besides ``tokred`` itself.
MODULES = ["tokred.ops", "tokred.flops", "tokred.bench", "tokred.stats", "tokred.testing", "tokred.testing.strategies"]


def _defined_in(module, name: str) -> str:
    """The tokred module that defines ``module.name`` (type aliases report ``typing``: search the submodules)."""
    obj = getattr(module, name)
    owner = getattr(obj, "__module__", None)
    if isinstance(owner, str) and owner.startswith("tokred"):
        return owner
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        sub = importlib.import_module(f"{module.__name__}.{info.name}")
        if getattr(sub, name, None) is obj:
            return sub.__name__
    return module.__name__


@pytest.mark.parametrize("name", sorted(tokred.__all__))
def test_every_public_name_of_tokred_has_an_api_entry(name):
    """Hand-curated pages, but complete: ``::: tokred.<name>`` for every name in ``tokred.__all__``."""
    idents = {b.ident for b in api_blocks()}
    assert f"tokred.{name}" in idents, (
        f"tokred.{name} is public (tokred.__all__) but no page under docs/reference/ has a '::: tokred.{name}' block; "
        "add it to the page of its role (docs/reference/api/*.md)"
    )


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_name_of_the_documented_modules_is_rendered(module_name):
    module = importlib.import_module(module_name)
    blocks = api_blocks()
    missing = []
    for name in module.__all__:
        owner, obj = _defined_in(module, name), getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            ok = rendered(blocks, module_name, name, owner)
        else:  # constants and type aliases have no docstring of their own: they need an explicit block
            ok = any(b.ident in (f"{module_name}.{name}", f"{owner}.{name}") for b in blocks)
        if not ok:
            missing.append(name)
    assert not missing, f"public names of {module_name} not rendered on any reference page: {missing}"


@pytest.mark.parametrize("module_name", ["tokred", *MODULES, "tokred.hookspecs", "tokred.adapters", "tokred.budget"])
def test_module_docstring_is_rendered(module_name):
    idents = {b.ident for b in api_blocks()}
    assert module_name in idents, f"add a '::: {module_name}' block (module docstring) to its reference page"


HOOKS = sorted(n for n, f in inspect.getmembers(tokred.hookspecs, inspect.isfunction) if n.startswith("tokred_"))


def test_hooks_are_found():
    assert "tokred_register_scorers" in HOOKS and "tokred_model_adapter" in HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_section_in_the_hooks_reference(hook):
    page = (DOCS / "plugins" / "hooks.md").read_text(encoding="utf-8")
    assert re.search(rf"^## {hook}\s*$", page, re.MULTILINE), f"docs/plugins/hooks.md needs a '## {hook}' section"
    assert f"::: tokred.hookspecs.{hook}" in page, f"the '## {hook}' section should render the spec"


def test_griffe_sees_the_mapped_packages_and_lazy_exports():
    """The docs build's griffe extensions: tokred.strategies/schedules (package-dir) and tokred.patch (lazy)."""
    import griffe

    spec = importlib.util.spec_from_file_location("griffe_tokred", ROOT / "scripts" / "griffe_tokred.py")
    assert spec is not None and spec.loader is not None
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    extensions = griffe.Extensions(
        ext.PackageDirMapping(), ext.LazyExports(packages={"tokred": "tokred.pipeline"}), ext.DocstringCompat()
    )
    loader = griffe.GriffeLoader(search_paths=[str(ROOT)], extensions=extensions)
    pkg = loader.load("tokred")
    loader.resolve_aliases(implicit=False, external=None)
    assert pkg["strategies.fastv.FastVStrategy"].filepath == ROOT / "strategies" / "fastv.py"
    assert pkg["schedules.linear.LinearScheduler"].filepath == ROOT / "schedules" / "linear.py"
    for name in ("patch", "PatchHandle", "ReductionStats"):
        if name in tokred.__all__:
            assert pkg[name].docstring is not None, f"griffe cannot see tokred.{name}"
    # Napoleon-style "Example:" sections become examples sections; Sphinx roles become cross-references.
    doc = pkg["flops.prefill_flops"].docstring.value
    assert "Examples:" in doc and "[`aim_linear_schedule`][tokred.flops.aim_linear_schedule]" in doc
