"""``tokred flops`` and the model-free budget prediction behind it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import tokred
from tokred.budget import predict_tokens_per_layer, relative_flops_measure, search_knob
from tokred.cli import app
from tokred.flops import get_known_config

runner = CliRunner()


def test_flops_cli_reproduces_aim_llava_onevision():
    args = ["flops", "llava-onevision-7b", "-s", "aim", "-o", "variant=video", "--visual", "196", "--images", "32"]
    args += ["--text", "100"]
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert rows["none"]["llm_prefill"] / 1e12 == pytest.approx(99.63, rel=5e-3)
    assert rows["aim"]["llm_prefill"] / 1e12 == pytest.approx(14.76, rel=5e-3)
    assert rows["aim"]["extra"]["visual_into_llm"] == 1568


def test_flops_cli_table_and_options():
    result = runner.invoke(app, ["flops", "llava-1.5-7b", "-s", "fastv", "-o", "keep_ratio=0.25"])
    assert result.exit_code == 0, result.output
    assert "fastv" in result.stdout and "none" in result.stdout


def test_flops_cli_unknown_model_suggests():
    from tokred.errors import UnknownNameError

    result = runner.invoke(app, ["flops", "llava-1.5-7", "-s", "fastv"])
    assert isinstance(result.exception, UnknownNameError)
    assert "llava-1.5-7b" in str(result.exception)


def test_flops_cli_reads_a_local_config(tmp_path):
    cfg = {"text_config": get_known_config("llava-1.5-7b")["text_config"]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    result = runner.invoke(app, ["flops", str(path), "-s", "fastv", "--visual", "576", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"]["fastv"]["relative_llm_prefill"] < 0.7


def test_predicted_tokens_follow_merger_and_schedule():
    aim = tokred.create_strategy("aim", variant="video", l1=2, l2=4)
    tokens = predict_tokens_per_layer(aim, num_layers=5, text_tokens=10, visual_tokens=196)
    assert tokens == [59, 59, 34, 10, 10]  # 196 -> 49 by merging, then (4 - l)/2 of 49 at 1-indexed layer 3
    pooled = predict_tokens_per_layer(tokred.create_strategy("pooling"), num_layers=2, text_tokens=0, visual_tokens=576)
    assert pooled == [144, 144]


@pytest.mark.parametrize("name", ["fastv", "aim", "aim-merge", "random"])
def test_knob_search_hits_a_flops_target(name):
    cfg = get_known_config("llava-1.5-7b")["text_config"]
    measure = relative_flops_measure(cfg, text_tokens=64, visual_tokens=576)
    found = search_knob(tokred.create_strategy(name), measure, 0.4)
    assert found.relative_error <= 0.02, (found.value, found.achieved)


def test_knob_search_reports_unreachable_targets():
    cfg = get_known_config("llava-1.5-7b")["text_config"]
    measure = relative_flops_measure(cfg, text_tokens=64, visual_tokens=576)
    found = search_knob(tokred.create_strategy("pooling"), measure, 0.5)
    assert found.relative_error > 0.02  # kernel 1 keeps all, kernel 2 a quarter: 50 % is not reachable
