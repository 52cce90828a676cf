"""The lmms-eval backend's model-side pieces that need no lmms-eval: argument validation, batches with
continuations, per-sample statistics and continuation scores (the backend itself: tests/lmms)."""

from __future__ import annotations

import pytest
import torch

from tokred.errors import ConfigError, UnknownNameError
from tokred.integrations.lmms_eval import LOADER_ARGS, split_model_args
from tokred.integrations.lmms_eval import _core as core


def test_split_model_args_separates_loader_args_and_builds_the_strategy():
    loader, strategy = split_model_args(
        {"pretrained": "tokred:reference", "strategy": "fastv", "keep_ratio": 0.25, "layer": 3, "batch_size": 4}
    )
    assert loader == {"pretrained": "tokred:reference", "strategy": "fastv", "batch_size": 4}
    assert strategy.name == "fastv"
    assert strategy.config.keep_ratio == 0.25 and strategy.config.layer == 3


def test_no_strategy_means_the_unreduced_model():
    _, strategy = split_model_args({"pretrained": "x"})
    assert strategy.name == "none"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"strategy": "fastv", "keep_ratoi": 0.2}, "did you mean 'keep_ratio'"),
        ({"strategy": "fastv", "pretrianed": "x"}, "did you mean 'pretrained'"),
        ({"strategy": "fastv", "keep_ratio": 3.0}, "less than or equal to 1"),
        ({"strategy": "none", "keep_ratio": 0.5}, "options of none: none"),
        ({"strategy": 3}, "give a strategy name"),
    ],
)
def test_bad_model_args_fail_with_one_clear_message(args, needle):
    with pytest.raises(ConfigError, match=None) as info:
        split_model_args(args)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_strategy_suggests_the_close_name():
    with pytest.raises(UnknownNameError, match="Did you mean: fastv"):
        split_model_args({"strategy": "fastV"})


def test_inconsistent_schedule_fails_before_any_model():
    with pytest.raises(ConfigError, match="strategy 'aim'"):
        split_model_args({"strategy": "aim", "l1": 20, "l2": 10})


def test_loader_args_are_documented():
    assert {"pretrained", "strategy", "batch_size", "device", "dtype"} <= set(LOADER_ARGS)


@pytest.fixture(scope="module")
def processor():
    from tokred.testing.saved import tiny_processor

    return tiny_processor()


def _image(colour):
    from PIL import Image

    return Image.new("RGB", (70, 60), colour)


def test_encode_left_pads_and_appends_continuations_after_each_prompt(processor):
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    prompts = [core.render(processor, core.user_turn(text, n)) for text, n in (("a", 1), ("a longer one", 2))]
    images = [[_image("red")], [_image("blue"), _image("green")]]
    conts = [torch.tensor([40, 41, 42]), torch.tensor([43])]
    batch = core.encode(processor, prompts, images, image_token_id=image_id, device="cpu", suffix_ids=conts)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    assert batch.visual_tokens == [16, 32]
    assert batch.inputs["pixel_values"].shape[0] == 3
    for b, cont in enumerate(conts):
        assert torch.equal(ids[b, -cont.shape[0] :], cont)  # continuation last, right-aligned
        assert mask[b, -1] == 1
        assert int(mask[b].sum()) == batch.text_tokens[b] + batch.visual_tokens[b]
    assert mask[0, 0] == 0  # the shorter row is left-padded


def test_continuation_scores_read_the_trailing_positions_of_a_shortened_sequence():
    torch.manual_seed(0)
    logits = torch.randn(2, 9, 11)  # a reduced length: positions before the tail were visual tokens
    conts = [torch.tensor([3, 4, 5]), torch.tensor([7])]
    scores = core.continuation_scores(logits, conts)
    logp = torch.log_softmax(logits, -1)
    expected0 = -(logp[0, 5, 3] + logp[0, 6, 4] + logp[0, 7, 5]) / 3
    assert scores[0][0] == pytest.approx(float(expected0), rel=1e-6)
    assert scores[1][0] == pytest.approx(float(-logp[1, 7, 7]), rel=1e-6)
    greedy = logits.clone()
    greedy[1, 7, 7] = 100.0
    assert core.continuation_scores(greedy, conts)[1][1] is True
    assert scores[1][1] is (int(logits[1, 7].argmax()) == 7)


def test_tokens_per_sample_subtract_each_rows_padding():
    batch = core.Batch({}, text_tokens=[10, 14], visual_tokens=[16, 16])
    assert core.tokens_per_sample([30, 30, 20, 20], batch, 4) == [[26, 26, 16, 16], [30, 30, 20, 20]]
    assert core.tokens_per_sample(None, batch, 2) == [[26, 26], [30, 30]]


def test_sample_stats_of_an_unreduced_prompt_have_relative_flops_one():
    from tokred.flops import get_known_config

    cfg = type("Cfg", (), get_known_config("llava-1.5-7b")["text_config"])()
    batch = core.Batch({}, text_tokens=[40], visual_tokens=[576])
    [row] = core.sample_stats("none", batch, None, cfg, "llm-viewer")
    assert row["relative_prefill_flops"] == 1.0 and row["visual_tokens_out"] == 576
    [row] = core.sample_stats("fastv", batch, [616, 616] + [184] * 30, cfg, "llm-viewer")
    assert row["visual_tokens_into_llm"] == 576 and row["visual_tokens_out"] == 144
    assert 0.2 < row["relative_prefill_flops"] < 0.5
    assert core.mean_stats([row, row])["relative_prefill_flops"] == pytest.approx(row["relative_prefill_flops"])


def test_generation_settings_and_stop_strings():
    kwargs, stops = core.generation_settings({"max_new_tokens": 5, "temperature": 0, "until": ["\n\n"]}, 32)
    assert kwargs == {"max_new_tokens": 5, "do_sample": False} and stops == ["\n\n"]
    kwargs, _ = core.generation_settings({"temperature": 0.7, "top_p": 0.9}, 32)
    assert kwargs == {"max_new_tokens": 32, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    assert core.truncate_at_stop("red\n\nmore", ["\n\n"]) == "red"
    assert core.truncate_at_stop("red. Blue", [".", "Bl"]) == "red"


def test_non_image_visuals_are_refused():
    with pytest.raises(ConfigError, match="video and audio tasks are not supported"):
        core.check_images(["clip.mp4"])


def test_the_lmms_eval_pin_is_the_same_in_make_the_matrix_and_the_docs():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = ("Makefile", "scripts/transformers_matrix.py", "docs/how-to/lmms-eval.md")
    pins = {f: set(re.findall(r"lmms-eval==[0-9][0-9.]*", (root / f).read_text())) for f in files}
    assert all(pins.values()), pins
    assert len(set().union(*pins.values())) == 1, pins
