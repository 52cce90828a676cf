"""The documentation site builds with ``mkdocs build --strict`` (broken links, anchors, references fail)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from docs_helpers import ROOT, run_python


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    mkdocs = [str(Path(sys.executable).with_name("mkdocs"))]
    assert Path(mkdocs[0]).exists(), "mkdocs is not installed in this environment (pip install -e '.[dev]')"
    result = run_python(
        "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site),
        env={"NO_MKDOCS_2_WARNING": "1"}, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "index.html").exists()
    api = (site / "reference" / "api" / "patching" / "index.html").read_text(encoding="utf-8")
    assert 'id="tokred.patch"' in api  # the reference page renders tokred.patch with its signature
    options = (site / "strategies" / "fastv" / "index.html").read_text(encoding="utf-8")
    assert "keep_ratio" in options and "<table>" in options  # the generated options table is included
