"""``tokred flops`` and FLOPs budget matching with VidCom2: the clip keeps ``max(1, floor(r * T * n))`` tokens."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import tokred
from tokred.budget import relative_flops_measure, search_knob, visual_after_merge
from tokred.cli import app
from tokred.flops import get_known_config

runner = CliRunner()


@pytest.mark.parametrize(("ratio", "kept"), [(0.25, 1568), (0.15, 940), (1.0, 6272)])
def test_vidcom2_keeps_its_share_of_the_clip(ratio, kept):
    args = ["flops", "llava-onevision-7b", "-s", "vidcom2", "-o", f"retention_ratio={ratio}", "--visual", "196"]
    result = runner.invoke(app, [*args, "--images", "32", "--text", "100", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"]["vidcom2"]["extra"]["visual_into_llm"] == kept  # floor(r * 32 * 196)


def test_budget_matching_finds_the_retention_ratio():
    s = tokred.create_strategy("vidcom2")
    assert visual_after_merge(s, 16, images=8, grid=(4, 4)) == 32 and visual_after_merge(s, 16, images=1) == 4
    cfg = get_known_config("llava-onevision-7b")["text_config"]
    measure = relative_flops_measure(cfg, text_tokens=100, visual_tokens=196, images=16, grid=(14, 14))
    for target in (0.25, 0.5):
        found = search_knob(s, measure, target)
        assert found.relative_error <= 0.02, (found.value, found.achieved)
        assert 0.0 < found.value <= 1.0 and found.strategy.merger.config.retention_ratio == found.value
