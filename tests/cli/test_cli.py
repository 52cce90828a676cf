"""The command line: results on stdout, errors as one line on stderr with exit code 1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import tokred
from tokred.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_list_json_names_every_builtin_with_options():
    result = invoke("list", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"strategies", "mergers", "scorers", "schedulers", "routers", "adapters"}
    strategies = {row["name"]: row for row in data["strategies"]}
    assert set(tokred.list_strategies()) == set(strategies)
    fastv = {o["name"]: o for o in strategies["fastv"]["options"]}
    assert fastv["keep_ratio"]["default"] == 0.5 and fastv["keep_ratio"]["bounds"] == "0.0 <= x <= 1.0"
    assert strategies["fastv"]["budget_knob"] == "keep_ratio"
    assert strategies["aim"]["components"]["scorer"]["name"] == "aim"
    for kind in ("mergers", "scorers", "schedulers", "routers"):
        for row in data[kind]:
            assert all(o["description"] for o in row["options"]), (kind, row["name"])


@pytest.mark.parametrize("kind", ["strategies", "mergers", "scorers", "schedulers", "scheduler"])
def test_list_one_kind_table(kind):
    result = invoke("list", kind, "--options")
    assert result.exit_code == 0, result.output
    assert kind.rstrip("s") in result.stdout


def test_list_unknown_kind_is_an_error():
    result = subprocess.run([sys.executable, "-m", "tokred.cli", "list", "widgets"], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().startswith("Error: Unknown kind 'widgets'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_show_aim_prints_paper_components_and_options():
    result = invoke("show", "aim")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "arXiv:2412.03248" in out
    assert "merger: aim" in out and "scorer: aim" in out and "scheduler: aim-linear" in out
    for option in ("keep_ratio", "l1", "l2", "mode", "temperature"):
        assert option in out
    assert "0.0 < x <= 1.0" in out  # bounds are shown


def test_show_kind_disambiguates():
    result = invoke("show", "aim", "--kind", "scorer", "--format", "json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["kind"] == "scorer" and info["query_rows"] == "all"


def test_show_unknown_name_suggests():
    result = subprocess.run([sys.executable, "-m", "tokred.cli", "show", "fastV"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "Did you mean: fastv" in result.stderr


def test_plugins_json_lists_builtins():
    result = invoke("plugins")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    names = {r["name"] for r in rows}
    assert "tokred.strategies.aim" in names
    aim = next(r for r in rows if r["name"] == "tokred.strategies.aim")
    assert "tokred_register_strategies" in aim["hooks"] and aim["builtin"]


def test_help_has_examples():
    result = invoke("list", "--help")
    assert result.exit_code == 0
    assert "tokred list strategies --options" in result.stdout
