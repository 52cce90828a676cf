"""Clear errors: patching twice, removing twice, unsupported models and modes, never a silent wrong answer."""

from __future__ import annotations

import pytest
import torch
from conftest import _cached
from tokred.schedules.constant import ConstantScheduler
from tokred.strategies.fastv import LastTokenAttentionScorer

import tokred
from tokred.adapters import hf
from tokred.errors import ConfigError, TokredError, UnsupportedModeError, UnsupportedModelError
from tokred.pipeline import patch
from tokred.testing.models import tiny_model

pytestmark = pytest.mark.integration


def _untouched(model):
    return (
        "_tokred_handle" not in model.__dict__
        and "generate" not in model.__dict__
        and not model.model._forward_pre_hooks
        and not model.get_decoder()._forward_pre_hooks
        and model.config.get_text_config()._attn_implementation == "sdpa"
    )


def test_patch_twice_and_remove_twice():
    model, _ = _cached("llava")
    handle = patch(model, "fastv")
    try:
        with pytest.raises(TokredError, match="already patched"):
            patch(model, "none")
    finally:
        handle.remove()
    with pytest.raises(TokredError, match="already removed"):
        handle.remove()
    assert _untouched(model)


def test_unsupported_model_names_families():
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokred.testing.models import tiny_text_kwargs

    model = LlamaForCausalLM(LlamaConfig(**tiny_text_kwargs()))
    with pytest.raises(UnsupportedModelError, match="LLaVA-1.5.*Qwen2-VL.*Gemma3"):
        patch(model, "fastv")


def test_deepstack_model_refuses_tower_merging_untouched():
    model, _ = tiny_model("qwen3_vl")
    with pytest.raises(UnsupportedModelError, match="vision-tower merging"):
        patch(model, "tome")
    assert _untouched(model)
    patch(model, "fastv").remove()  # DeepStack itself is handled


def test_layer_zero_is_never_pruned():
    model, make = _cached("llava")
    strategy = tokred.compose(scorer=LastTokenAttentionScorer(), scheduler=ConstantScheduler(keep_ratio=0.5))
    with patch(model, strategy), pytest.raises(ConfigError, match="layer 0"):
        model(**make())


def test_different_visual_counts_raise():
    model, make = _cached("llava")
    one, two = make(batch=1, num_images=1), make(batch=1, num_images=2)
    width = two["input_ids"].shape[1]
    pad = width - one["input_ids"].shape[1]
    batch = {
        "input_ids": torch.cat([torch.nn.functional.pad(one["input_ids"], (pad, 0)), two["input_ids"]]),
        "attention_mask": torch.cat([torch.nn.functional.pad(one["attention_mask"], (pad, 0)), two["attention_mask"]]),
        "pixel_values": torch.cat([one["pixel_values"], two["pixel_values"]]),
    }
    with patch(model, "fastv"), pytest.raises(UnsupportedModeError, match="different visual token counts"):
        model(**batch)
    with patch(model, "pooling"), torch.no_grad():  # pre-LLM reduction handles them (re-padded per sample)
        out = model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert out.shape == (2, width + 2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(cache_implementation="static"), "cache_implementation"),
        (dict(prefill_chunk_size=8), "chunked prefill"),
        ("assistant", "assisted"),
    ],
)
def test_unsupported_generation_modes(kwargs, match):
    model, make = _cached("llava")
    if kwargs == "assistant":
        kwargs = dict(assistant_model=model)
    with patch(model, "fastv"), pytest.raises(UnsupportedModeError, match=match):
        model.generate(**make(), max_new_tokens=2, **kwargs)


def test_multi_token_step_on_non_empty_cache_raises():
    model, make = _cached("llava")
    inputs = make()
    with patch(model, "fastv"), torch.no_grad():
        out = model(**inputs, use_cache=True)
        nxt = torch.tensor([[5, 6]])
        mask = torch.ones(1, inputs["input_ids"].shape[1] + 2, dtype=torch.long)
        with pytest.raises(UnsupportedModeError, match="non-empty cache"):
            model(input_ids=nxt, attention_mask=mask, **{hf.CACHE_KWARG: hf.output_cache(out)})


def test_sliding_window_shorter_than_sequence_raises():
    model, make = tiny_model("gemma3", sliding_window=8)
    with patch(model, "fastv"), pytest.raises(UnsupportedModeError, match="sliding window"):
        model(**make())
    with patch(model, "pooling"), torch.no_grad():  # no in-LLM pruning: the stock sliding cache is fine
        model(**make())


def test_flash_attention_request_is_refused():
    model, _ = _cached("llava")
    with pytest.raises(UnsupportedModeError, match="flash_attention_2"):
        patch(model, "fastv", attn_implementation="flash_attention_2")
    assert _untouched(model)


def test_inputs_embeds_without_ids_raise():
    model, make = _cached("llava")
    inputs = make()
    with torch.no_grad():
        embeds = model.get_input_embeddings()(inputs["input_ids"])
    with patch(model, "fastv"), pytest.raises(UnsupportedModeError, match="input_ids"):
        model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])


def test_strategy_options_are_validated():
    model, _ = _cached("llava")
    with pytest.raises(ConfigError, match="keep_ratio"):
        patch(model, "fastv", keep_rato=0.5)
    assert _untouched(model)
