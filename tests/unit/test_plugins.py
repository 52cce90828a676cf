"""Third-party plugins load through the ``tokred`` entry-point group, exactly like the built-ins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tokred
from tokred._plugins import DEFAULT_PLUGINS, get_plugin_manager
from tokred.errors import RegistrationError

PLUGIN_SOURCE = '''
"""A third-party tokred plugin used by the tests."""
import torch
from pydantic import Field
import tokred


class NormScorer(tokred.BaseScorer):
    """Keep visual tokens with the largest feature norm."""

    name = "demo-norm"

    def score(self, ctx):
        return ctx.features.norm(dim=-1)


class DemoStrategy(tokred.Strategy):
    """Drop low-norm visual tokens after layer K."""

    name = "{strategy_name}"
    budget_knob = "keep_ratio"

    class Config(tokred.ComponentConfig):
        keep_ratio: float = Field(0.5, gt=0, le=1, description="Fraction kept.")

    def build(self):
        schedule = tokred.create_component("scheduler", "one-shot", layer=1, keep_ratio=self.config.keep_ratio)
        return None, NormScorer(), schedule


@tokred.hookimpl
def tokred_register_scorers(register):
    register(NormScorer)


@tokred.hookimpl
def tokred_register_strategies(register):
    register(DemoStrategy)
'''


def make_plugin_dist(root: Path, strategy_name: str = "demo") -> Path:
    """Write a module and an installed-distribution record (dist-info with an entry point) under ``root``."""
    sys.modules.pop("tokred_demo_plugin", None)  # another test may have imported a different version
    (root / "tokred_demo_plugin.py").write_text(PLUGIN_SOURCE.replace("{strategy_name}", strategy_name))
    info = root / "tokred_demo_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tokred-demo-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[tokred]\ndemo = tokred_demo_plugin\n")
    return root


@pytest.fixture
def plugin_path(tmp_path, monkeypatch, fresh_plugins):
    make_plugin_dist(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("TOKRED_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    return tmp_path


def test_entry_point_plugin_is_discovered(plugin_path):
    assert "demo" in tokred.list_strategies()
    assert "demo-norm" in tokred.list_components("scorers")
    strategy = tokred.create_strategy("demo", keep_ratio=0.25)
    assert strategy.scheduler is not None and strategy.scheduler.budgets(3, 8) == [8, 2, 2]


def test_plugin_passes_conformance(plugin_path):
    from tokred.testing import check_component

    check_component(tokred.create_strategy("demo"))


def test_autoload_switch_disables_entry_points(plugin_path, monkeypatch):
    monkeypatch.setenv("TOKRED_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "demo" not in tokred.list_strategies()
    assert "fastv" in tokred.list_strategies()  # built-ins still load


def test_blocked_plugin_is_skipped(plugin_path, monkeypatch):
    monkeypatch.setenv("TOKRED_DISABLED_PLUGINS", "demo")
    assert "demo" not in tokred.list_strategies()


def test_duplicate_from_plugin_names_both_origins(tmp_path, monkeypatch, fresh_plugins):
    make_plugin_dist(tmp_path, strategy_name="fastv")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RegistrationError) as info:
        tokred.list_strategies()
    message = str(info.value)
    assert "tokred.strategies.fastv" in message and "tokred_demo_plugin" in message


def test_builtins_register_through_the_plugin_manager(fresh_plugins):
    pm = get_plugin_manager()
    names = {name for name, _ in pm.list_name_plugin()}
    assert set(DEFAULT_PLUGINS) <= names


def test_trace_switch_prints_hook_calls(plugin_path):
    env = {**os.environ, "PYTHONPATH": str(plugin_path), "TOKRED_TRACE_PLUGINS": "1"}
    code = "import tokred; tokred.list_strategies()"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "tokred_register_strategies" in out.stderr and "demo" in out.stderr


def test_cli_lists_third_party_plugin(plugin_path):
    env = {**os.environ, "PYTHONPATH": str(plugin_path)}
    cmd = [sys.executable, "-m", "tokred.cli", "list", "strategies", "--format", "json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    names = [row["name"] for row in json.loads(out.stdout)["strategies"]]
    assert "demo" in names
    plugins = subprocess.run(
        [sys.executable, "-m", "tokred.cli", "plugins", "--external"], env=env, capture_output=True, text=True
    )
    rows = json.loads(plugins.stdout)
    assert any(r["distribution"] == "tokred-demo-plugin" and "tokred_register_strategies" in r["hooks"] for r in rows)


def test_plugin_source_is_valid_python():
    compile(textwrap.dedent(PLUGIN_SOURCE), "plugin", "exec")
