"""The plugin tutorial's package (docs/examples/tokred-l2norm) installs, is found, conforms and passes its tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from docs_helpers import EXAMPLES, ROOT, run_python

PACKAGE = EXAMPLES / "tokred-l2norm"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package installed (offline, no dependencies) into a private folder, from a copy of its source."""
    work = tmp_path_factory.mktemp("l2norm")
    source = work / "src"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(target.glob("tokred_l2norm-*.dist-info")), "the wheel has no metadata (entry points)"
    return target


def test_tokred_list_shows_the_plugin(installed):
    result = run_python("-m", "tokred", "list", "all", "--format", "json", env={"PYTHONPATH": str(installed)})
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    scorers = {row["name"]: row for row in listing["scorers"]}
    strategies = {row["name"]: row for row in listing["strategies"]}
    assert "l2norm" in scorers and "l2norm" in strategies
    assert scorers["l2norm"]["plugin"] == "l2norm"  # registered by the entry point, not imported by hand
    assert [o["name"] for o in strategies["l2norm"]["options"]] == ["layer", "keep_ratio", "power"]


def test_tokred_plugins_lists_the_distribution(installed):
    result = run_python("-m", "tokred", "plugins", "--external", env={"PYTHONPATH": str(installed)})
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["name"], r["distribution"]) for r in rows] == [("l2norm", "tokred-l2norm")]


def test_plugin_passes_the_conformance_suite(installed):
    code = (
        "import tokred; from tokred.testing import check_component; "
        "s = tokred.create_strategy('l2norm', keep_ratio=0.25); check_component(s); "
        "check_component(tokred.create_component('scorer', 'l2norm')); "
        "assert s.scheduler.budgets(32, 576)[:4] == [576, 576, 144, 144]; print('ok')"
    )
    result = run_python("-c", code, env={"PYTHONPATH": str(installed)})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_plugin_can_be_disabled(installed):
    code = "import tokred; print('l2norm' in tokred.list_strategies())"
    env = {"PYTHONPATH": str(installed), "TOKRED_DISABLED_PLUGINS": "l2norm"}
    result = run_python("-c", code, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stdout + result.stderr


def test_the_tutorials_own_tests_pass(installed):
    test_file = PACKAGE / "test_tokred_l2norm.py"
    result = run_python(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(PACKAGE), str(test_file),
        env={"PYTHONPATH": str(installed), "HYPOTHESIS_PROFILE": "dev"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert ROOT.exists()
