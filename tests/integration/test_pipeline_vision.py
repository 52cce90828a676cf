"""Vision-tower merging (ToMe) in CLIP, SigLIP and DINOv2 towers of LLaVA-style models."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    Dinov2Config,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    SiglipVisionConfig,
)

from tokred.errors import UnsupportedModelError
from tokred.pipeline import patch
from tokred.testing.models import tiny_model, tiny_text_kwargs

pytestmark = pytest.mark.integration

TOWERS = {
    "clip": CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4
    ),
    "siglip": SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4
    ),
    "dinov2": Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4, mlp_ratio=2
    ),
}


def _llava(tower):
    vc = TOWERS[tower]
    cfg = LlavaConfig(
        vision_config=vc,
        text_config=LlamaConfig(**tiny_text_kwargs()),
        image_token_index=250,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full" if tower == "siglip" else "default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.set_attn_implementation("sdpa")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (2, 70), generator=gen)
    ids[:, 3:67] = 250
    ids[0, :2] = 0  # left padding of the first sample
    mask = (ids != 0).long()
    return model, dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(2, 3, 32, 32, generator=gen))


@pytest.mark.parametrize("tower", list(TOWERS))
def test_tome_r0_is_bitwise_identical(tower):
    model, inputs = _llava(tower)
    with torch.no_grad():
        ref = model(**inputs).logits
        with patch(model, "tome", r=0):
            out = model(**inputs).logits
    assert torch.equal(out, ref)


@pytest.mark.parametrize("tower", list(TOWERS))
def test_tome_shrinks_placeholders_and_generate_matches_recomputation(tower):
    model, inputs = _llava(tower)
    n = inputs["input_ids"].shape[1]
    with patch(model, "tome", r=8) as handle, torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        # vision_feature_layer=-1: both tower layers merge (64 -> 56 -> 48 patches per image)
        assert handle.stats.visual_tokens_in == 128 and handle.stats.visual_tokens_out == 2 * 48
        assert handle.stats.tokens_per_layer == [n - 16] * 4
        assert torch.equal(out.sequences[:, :n], inputs["input_ids"])
        for step, logits in enumerate(out.logits):
            full = dict(inputs)
            full["input_ids"] = out.sequences[:, : n + step]
            full["attention_mask"] = torch.nn.functional.pad(inputs["attention_mask"], (0, step), value=1)
            ref = model(**full, use_cache=False).logits[:, -1]
            assert (logits - ref).abs().max().item() <= 1e-5


def test_tome_refused_where_the_projector_needs_a_fixed_grid():
    model, _ = tiny_model("gemma3")
    with pytest.raises(UnsupportedModelError, match="fixed grid"):
        patch(model, "tome")
    assert "_tokred_handle" not in model.__dict__


def test_tome_refuses_models_that_concatenate_several_tower_layers():
    import pytest as _pytest

    import tokred
    from tokred.errors import UnsupportedModelError
    from tokred.testing.models import tiny_model

    model, _ = tiny_model("llava")
    model.config.vision_feature_layer = [-2, -1]
    with _pytest.raises(UnsupportedModelError, match="vision_feature_layer"):
        tokred.patch(model, "tome")
