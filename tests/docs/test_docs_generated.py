"""Generated pages match the code: the CLI reference, the option tables, and a page for every built-in."""

from __future__ import annotations

import re

import pytest
import yaml
from docs_helpers import DOCS, ROOT, run_python


def test_cli_reference_has_no_drift():
    result = run_python("scripts/gen_cli_docs.py", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_option_tables_have_no_drift():
    result = run_python("scripts/gen_strategy_docs.py", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def _builtins(kind: str) -> list[str]:
    from tokred._plugins import DEFAULT_PLUGINS, get_registries

    reg = get_registries().by_kind(kind)
    return [n for n in reg.names() if reg.plugin(n) in DEFAULT_PLUGINS]


def _nav_pages() -> set[str]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # !relative, !!python/name, !ENV
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)  # noqa: S506
    pages: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, str):
            pages.add(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(config["nav"])
    return pages


@pytest.mark.parametrize(("kind", "folder"), [("strategies", "strategies"), ("schedulers", "schedulers")])
def test_every_builtin_strategy_and_scheduler_has_a_page(kind, folder):
    nav = _nav_pages()
    for name in _builtins(kind):
        page = DOCS / folder / f"{name}.md"
        assert page.exists(), f"built-in {kind[:-1]} '{name}' has no page {page.relative_to(ROOT)}"
        text = page.read_text(encoding="utf-8")
        assert f'--8<-- "docs/_options/{kind}/{name}.md"' in text, f"{page.name} must include its generated options"
        assert f"{folder}/{name}.md" in nav, f"{folder}/{name}.md is not in the mkdocs.yml nav"


def test_every_builtin_merger_and_scorer_is_on_the_components_page():
    text = (DOCS / "strategies" / "components.md").read_text(encoding="utf-8")
    for kind, singular in (("mergers", "merger"), ("scorers", "scorer")):
        for name in _builtins(kind):
            assert re.search(rf"\{{ #{singular}-{re.escape(name)} \}}", text), f"no section for {singular} '{name}'"
            assert f'--8<-- "docs/_options/{kind}/{name}.md"' in text


def test_every_strategy_page_has_a_results_section():
    for name in _builtins("strategies"):
        text = (DOCS / "strategies" / f"{name}.md").read_text(encoding="utf-8")
        assert "## Results on the reference model" in text, f"strategies/{name}.md lacks the results section"
