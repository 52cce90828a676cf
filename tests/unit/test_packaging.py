"""Packaging: strategies/ and schedules/ install as tokred.strategies / tokred.schedules, never as bare names."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, cwd: Path, extra_path: str | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ)
    if extra_path:
        env["PYTHONPATH"] = extra_path
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("name", ["strategies", "schedules"])
def test_bare_names_do_not_import_from_the_checkout(name):
    result = run_python(f"import {name}", cwd=ROOT)
    assert result.returncode != 0
    assert f"tokred.{name}" in result.stderr  # the error says what to import instead


@pytest.mark.parametrize("name", ["strategies", "schedules"])
def test_namespaced_packages_import(name, tmp_path):
    result = run_python(f"import tokred.{name}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_built_wheel_contains_every_module_and_works(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next(tmp_path.glob("tokred-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"tokred/{p.relative_to(ROOT / 'tokred')}" for p in (ROOT / "tokred").rglob("*.py")}
    expected |= {f"tokred/strategies/{p.name}" for p in (ROOT / "strategies").glob("*.py")}
    expected |= {f"tokred/schedules/{p.name}" for p in (ROOT / "schedules").glob("*.py")}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert not any(n.startswith(("strategies/", "schedules/")) for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        # The dev environment has tokred installed editable: drop its import hook so the wheel's copy is used.
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
        "import tokred, tokred.strategies, tokred.schedules; "
        "assert tokred.__file__.startswith(sys.argv[1]), tokred.__file__; "
        "assert 'fastv' in tokred.list_strategies(); "
        "import importlib.util; assert importlib.util.find_spec('strategies') is None"
    )
    result = subprocess.run(
        [sys.executable, "-c", code.replace("sys.argv[1]", repr(str(site)))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
