"""``tokred flops`` with several frames: AIM's ``variant="auto"`` takes the video defaults, EVS counts the clip."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tokred.cli import app

runner = CliRunner()


def _rows(*args: str) -> dict:
    result = runner.invoke(app, ["flops", "llava-onevision-7b", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["rows"]


def test_aim_auto_reproduces_the_papers_32_frame_figure_without_options():
    rows = _rows("-s", "aim", "--visual", "196", "--images", "32", "--text", "100")
    assert rows["none"]["llm_prefill"] / 1e12 == pytest.approx(99.63, rel=5e-3)
    assert rows["aim"]["llm_prefill"] / 1e12 == pytest.approx(14.76, rel=5e-3)
    assert rows["aim"]["extra"]["visual_into_llm"] == 1568  # 32 x 49


def test_one_image_keeps_the_image_defaults():
    rows = _rows("-s", "aim", "--visual", "576", "--images", "1", "--text", "100")
    assert rows["aim"]["extra"]["visual_into_llm"] == 252  # 576 -> 288 -> 252


@pytest.mark.parametrize(("rate", "kept"), [(0.75, 1568), (0.5, 3136), (0.99, 196)])
def test_evs_keeps_its_share_of_the_clip(rate, kept):
    rows = _rows("-s", "evs", "-o", f"rate={rate}", "--visual", "196", "--images", "32", "--text", "100")
    assert rows["evs"]["extra"]["visual_into_llm"] == kept  # max(196, floor(32 * 196 * (1 - rate)))
