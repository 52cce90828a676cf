"""The results tables on the strategy pages are generated from the committed compare run, never typed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_results_docs", ROOT / "scripts" / "gen_results_docs.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_results_snippets_have_no_drift():
    gen = _generator()
    drifted = [p for p, text in gen.render().items() if not p.exists() or p.read_text() != text]
    assert not drifted, f"run python scripts/gen_results_docs.py --update: {drifted}"


def test_every_strategy_page_includes_its_results():
    for page in (ROOT / "docs" / "strategies").glob("*.md"):
        if page.stem in ("index", "components"):
            continue
        assert f'--8<-- "docs/_results/{page.stem}.md"' in page.read_text(), page


def test_committed_run_is_a_real_compare_output():
    data = json.loads((ROOT / "docs" / "results" / "reference-compare.json").read_text())
    rows = {r["strategy"]: r for r in data["rows"]}
    assert rows["none"]["relative_flops"] == 1.0
    assert {"aim", "fastv"} <= set(rows)
    assert data["settings"]["model"] is None  # the built-in reference model
