"""AIM's defaults follow the paper's input variant (image: LLaVA-1.5, video: LLaVA-OneVision)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import tokred
from tokred.budget import predict_tokens_per_layer
from tokred.cli import app


def test_image_variant_is_the_default_for_image_inputs():
    aim = tokred.create_strategy("aim")
    assert aim.config.variant == "auto"
    assert aim.merger.config.keep_ratio == 0.4375
    assert aim.merger.output_count(576) == 252  # 576 -> 288 -> 252
    assert aim.scheduler.resolved(32) == (13, 21)  # Vicuna-7B


def test_video_variant_reproduces_the_onevision_setting():
    aim = tokred.create_strategy("aim", variant="video")
    assert aim.merger.config.keep_ratio == 0.25
    assert aim.merger.output_count(196) == 49
    assert aim.scheduler.resolved(28) == (14, 22)  # Qwen2-7B
    tokens = predict_tokens_per_layer(aim, num_layers=28, text_tokens=100, visual_tokens=196, images=32)
    assert tokens[0] == 100 + 1568 and tokens[14] == 100 + 1568 * 7 // 8 and tokens[21] == 100


@pytest.mark.parametrize(("variant", "depth", "expected"), [("image", 28, (11, 18)), ("video", 32, (16, 25))])
def test_variant_schedules_scale_to_other_depths(variant, depth, expected):
    aim = tokred.create_strategy("aim-prune", variant=variant)
    assert aim.scheduler.resolved(depth) == expected


def test_explicit_options_override_the_variant():
    aim = tokred.create_strategy("aim", variant="video", keep_ratio=0.5, l1=3, l2=5)
    assert aim.merger.config.keep_ratio == 0.5 and aim.scheduler.resolved(28) == (3, 5)
    merge = tokred.create_strategy("aim-merge", variant="video")
    assert merge.merger.config.keep_ratio == 0.25


def test_show_aim_names_the_variant_and_its_defaults():
    result = CliRunner().invoke(app, ["show", "aim", "--format", "json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert any(o["name"] == "variant" and o["default"] == "auto" for o in info["options"])
    assert info["components"]["merger"]["config"]["keep_ratio"] == 0.4375
    assert info["components"]["scheduler"]["config"]["variant"] == "image"
    text = CliRunner().invoke(app, ["show", "aim"]).stdout
    assert "video" in text and "0.4375" in text
    assert "images_as_clip" in text, "how to say that a prompt's images are one clip's frames (the generic path)"
