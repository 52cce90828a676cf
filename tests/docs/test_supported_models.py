"""The supported-models page is the committed family sweep, rendered; the sweep has no BROKEN family, and every family
it found WORKS is in the pipeline tests' parametrisation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tokred.adapters import hf

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "docs" / "_sweep" / "sweep.json"


def _script():
    spec = importlib.util.spec_from_file_location("sweep_families", ROOT / "scripts" / "sweep_families.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_is_the_rendered_sweep():
    data = json.loads(SWEEP.read_text())
    page = (ROOT / "docs" / "supported-models.md").read_text()
    assert page == _script().render(data["results"], data["transformers"]), (
        "docs/supported-models.md differs from docs/_sweep/sweep.json: run python scripts/sweep_families.py --update"
    )


def test_sweep_was_run_on_a_tested_transformers_and_covers_every_family_it_lists():
    data = json.loads(SWEEP.read_text())
    assert hf.version_in_range(data["transformers"])
    families = [r["family"] for r in data["results"]]
    assert len(families) == len(set(families)) and len(families) >= 90


def test_no_family_is_broken():
    broken = [r["family"] for r in json.loads(SWEEP.read_text())["results"] if r["status"] == "BROKEN"]
    assert broken == []


def test_every_clear_error_says_why():
    for r in json.loads(SWEEP.read_text())["results"]:
        if r["status"] == "CLEAR ERROR":
            assert len(r["detail"]) > 40, r


def test_pipeline_tests_run_on_every_working_family():
    spec = importlib.util.spec_from_file_location(
        "integration_conftest", ROOT / "tests" / "integration" / "conftest.py"
    )
    integration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(integration)
    works = {r["family"] for r in json.loads(SWEEP.read_text())["results"] if r["status"] == "WORKS"}
    from tokred.testing.generic import image_text_families

    assert works & set(image_text_families()) <= set(integration.FAMILIES)
