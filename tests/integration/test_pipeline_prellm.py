"""Pre-LLM reduction: reduced features with consistently shortened inputs, inside generate()."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

import tokred
from tokred import MergeContext
from tokred.pipeline import patch

pytestmark = pytest.mark.integration

GRID_FAMILIES = ["llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "smolvlm", "internvl", "gemma3"]
ONE_D = ["llava", "idefics3", "smolvlm", "internvl", "gemma3"]


def _reference_inputs(model, inputs, merger, grid):
    """Shortened inputs built by hand: the merger on the image's features, fewer placeholders, same text."""
    adapter = tokred.pipeline.select_adapter(model)
    enc = adapter.encoder_kwargs(inputs)
    with torch.no_grad():
        out = adapter.base.get_image_features(**enc, return_dict=True)
    feats = out.pooler_output
    x = feats[0] if isinstance(feats, (list, tuple)) else feats[0]
    res = merger.merge(x[None], MergeContext(grid=grid))
    ids = inputs["input_ids"]
    slots = (ids[0] == adapter.image_token_id).nonzero()[:, 0]
    start, n, m = int(slots[0]), slots.numel(), res.x.shape[1]
    keep = torch.cat([torch.arange(start + m), torch.arange(start + n, ids.shape[1])])
    ref = {
        k: v[:, keep]
        for k, v in inputs.items()
        if k in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
    }
    pooled = res.x[0] if isinstance(feats, (list, tuple)) else res.x
    image = BaseModelOutputWithPooling(pooler_output=[pooled] if isinstance(feats, (list, tuple)) else pooled)
    deepstack = getattr(out, "deepstack_features", None)
    if deepstack:  # Qwen3-VL: the features added inside the LLM go through the same merger
        image.deepstack_features = [
            (merger.merge(level[0][None], MergeContext(grid=grid)).x[0],) for level in deepstack
        ]
    ref["mm_encoder_outputs"] = {"image": image}
    if "image_grid_thw" in inputs:  # let Qwen compute M-RoPE itself for the pooled grid
        merge = model.config.vision_config.spatial_merge_size
        ref["image_grid_thw"] = torch.tensor([[1, res.grid[0] * merge, res.grid[1] * merge]])
    return ref, m


def _grid(family, model):
    return (4, 4) if family != "llava" else (8, 8)


@pytest.mark.parametrize("family", GRID_FAMILIES)
@pytest.mark.parametrize("strategy", ["pooling", "random", "divprune"])
def test_prellm_generate_matches_reference(family, strategy):
    from conftest import _cached

    if strategy in ("random", "divprune") and family not in ONE_D:
        pytest.skip("M-RoPE + selection is covered by test_qwen_selection_keeps_mrope_positions")
    model, make = _cached(family)
    inputs = make(batch=1)
    n = inputs["input_ids"].shape[1]
    opts = {"pooling": dict(kernel=2), "random": dict(layer=0, keep_ratio=0.5, seed=1), "divprune": {}}[strategy]
    with patch(model, strategy, **opts) as handle, torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        merger = handle.strategy.merger
        stats = handle.stats
    ref_inputs, m = _reference_inputs(model, inputs, merger, _grid(family, model))
    assert torch.equal(out.sequences[:, :n], inputs["input_ids"]), "generate must return the caller's prompt"
    assert stats.visual_tokens_out == m and stats.tokens_per_layer[0] == ref_inputs["input_ids"].shape[1]
    for step, logits in enumerate(out.logits):
        full = dict(ref_inputs)
        gen = out.sequences[:, n : n + step]
        full["input_ids"] = torch.cat([ref_inputs["input_ids"], gen], 1)
        for key in ("attention_mask", "token_type_ids", "mm_token_type_ids"):
            if key in full:
                fill = 1 if key == "attention_mask" else 0
                full[key] = torch.nn.functional.pad(full[key], (0, step), value=fill)
        full["mm_encoder_outputs"] = dict(ref_inputs["mm_encoder_outputs"])
        with torch.no_grad():
            ref = model(**full, use_cache=False).logits[:, -1]
        assert (logits - ref).abs().max().item() <= 1e-5, f"step {step}"


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_selection_keeps_mrope_positions(family):
    """A pre-LLM selection keeps each kept token's own M-RoPE position (text keeps its own too)."""
    from conftest import _cached

    model, make = _cached(family)
    inputs = make(batch=2)
    seen = {}

    def grab(mod, args, kwargs):
        seen["pos"] = kwargs.get("position_ids")
        seen["ids"] = kwargs.get("input_ids")

    with patch(model, "random", layer=0, keep_ratio=0.5, seed=2):
        h = model.model.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                model(**inputs)
        finally:
            h.remove()
    # the hook registered after tokred's sees the shortened inputs and tokred's positions
    full, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    pos, ids = seen["pos"], seen["ids"]
    assert pos.shape[0] == 3 and pos.shape[-1] == ids.shape[1] < inputs["input_ids"].shape[1]
    for b in range(2):
        orig = {tuple(full[:, b, j].tolist()) for j in range(full.shape[-1])}
        real = ids[b] != 0
        assert all(tuple(pos[:, b, j].tolist()) in orig for j in range(ids.shape[1]) if real[j])


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_anyres_newlines_are_text_like(family):
    from conftest import _cached

    model, make = _cached(family)
    inputs = make(batch=1)
    adapter = tokred.pipeline.select_adapter(model)
    with torch.no_grad():
        feats = adapter.base.get_image_features(**adapter.encoder_kwargs(inputs), return_dict=True).pooler_output[0]
    newlines = int(adapter.text_like_rows(feats).sum())
    assert newlines > 0
    placeholders = int((inputs["input_ids"] == adapter.image_token_id).sum())
    with patch(model, "fastv", keep_ratio=0.0) as handle, torch.no_grad():
        model(**inputs)
        assert handle.stats.visual_tokens_out == 0
        assert handle.stats.tokens_per_layer[-1] == inputs["input_ids"].shape[1] - (placeholders - newlines)
    with patch(model, "random", layer=0, keep_ratio=0.5) as handle, torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        content = placeholders - newlines
        assert handle.stats.visual_tokens_out == int(0.5 * content)
        assert handle.stats.tokens_per_layer[0] == inputs["input_ids"].shape[1] - (content - int(0.5 * content))
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2


@pytest.mark.parametrize("strategy,options", [("pooling", {}), ("aim-merge", {}), ("random", dict(layer=0, seed=1))])
def test_deepstack_features_reduced_with_the_visual_tokens(strategy, options):
    """Qwen3-VL: the features DeepStack adds inside the LLM are reduced with each token's provenance (a merge
    averages its group, a selection gathers), so they land on the tokens they belong to."""
    from conftest import _cached

    from tokred.adapters import hf

    model, make = _cached("qwen3_vl")
    inputs = make(batch=2)
    adapter = tokred.pipeline.select_adapter(model)
    with torch.no_grad():
        full = hf.image_features(adapter.base, adapter.encoder_kwargs(inputs))
    levels = hf.injected_features(full)  # [(per-image (n_i, C))]
    seen = {}

    def grab(mod, args, kwargs):
        call = hf.CallArgs(args, kwargs)
        seen["mask"], seen["embeds"] = call.visual_pos_masks, call.deepstack_embeds

    with patch(model, strategy, **options) as handle, torch.no_grad():
        h = model.get_decoder().register_forward_pre_hook(grab, with_kwargs=True)
        try:
            model(**inputs)
        finally:
            h.remove()
        prov = handle.stats.visual_provenance
    mask = seen["mask"]  # (B, N') visual positions of the shortened sequence
    assert int(mask.sum()) < sum(f.shape[0] for f in levels[0])  # really reduced
    flat = mask.flatten().cumsum(0).view(mask.shape) - 1  # row of each visual position in the embeds
    for level, embeds in zip(levels, seen["embeds"]):
        for (b, positions), feats in zip(prov, level):
            for pos in positions.unique():
                if pos < 0:
                    continue
                group = feats[positions == pos].mean(0)  # the original rows merged into this slot
                torch.testing.assert_close(embeds[flat[b, pos]], group, rtol=1e-5, atol=1e-6)
