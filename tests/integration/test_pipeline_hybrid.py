"""Hybrid decoders (issue 14 item 4): in-LLM pruning on decoders whose linear-attention (Qwen3.5 GatedDeltaNet) or
convolution (LFM2 short conv) layers keep one state per sequence, in their real order (state layers before and after
the pruning layer); what stays refused is refused at patch time, the model untouched. Also the attention kinds whose
per-token cache may evict by physical position (reference sliding attention): guarded like sliding windows."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import reference_last_logits
from test_pipeline import _batch_vs_singles

import tokred
from tokred.errors import UnsupportedModelError
from tokred.testing.generic import generic_tiny_model, image_text_families

pytestmark = pytest.mark.integration

GEN = dict(max_new_tokens=3, do_sample=False)
LIN, CONV, FULL = "linear_attention", "conv", "full_attention"
#: (family, layer types, fastv layer): the scoring layer (fastv layer - 1) is an attention layer, state layers run
#: before it (full sequence) and after the pruning layer (kept sequence).
CASES = [
    pytest.param("qwen3_5", (LIN, FULL, LIN, FULL), 2, id="qwen3_5"),
    pytest.param("qwen3_5_moe", (LIN, FULL, LIN, FULL), 2, id="qwen3_5_moe"),
    pytest.param("lfm3_vl", (CONV, CONV, FULL, CONV), 3, id="lfm3_vl"),
]


@functools.cache
def _hybrid(family: str, types: tuple[str, ...]):
    if family not in image_text_families():
        pytest.skip(f"this transformers has no {family}")
    model, make, _ = generic_tiny_model(family, text_layer_types=list(types))
    return model, make


def _generate(model, inputs):
    with torch.no_grad():
        return model.generate(**inputs, **GEN, output_logits=True, return_dict_in_generate=True)


@pytest.mark.parametrize("family,types,layer", CASES)
def test_pruned_prefill_decode_matches_no_cache_reference(family, types, layer):
    """Cached generate() on a left-padded batch equals the no-cache reference on the kept set at every step, and the
    state layers after the pruning layer really ran on the kept sequence."""
    model, make = _hybrid(family, types)
    inputs = make(batch=2)
    n = inputs["input_ids"].shape[1]
    with tokred.patch(model, "fastv", layer=layer, keep_ratio=0.5) as handle:
        out = _generate(model, inputs)
        stats = handle.stats
    assert stats.tokens_per_layer[:layer] == [n] * layer and max(stats.tokens_per_layer[layer:]) < n
    for step, logits in enumerate(out.logits):
        full = dict(inputs)
        full["input_ids"] = torch.cat([inputs["input_ids"], out.sequences[:, n : n + step]], 1)
        for key in ("attention_mask", "mm_token_type_ids", "token_type_ids"):
            if key in full:
                fill = 1 if key == "attention_mask" else 0
                full[key] = torch.nn.functional.pad(inputs[key], (0, step), value=fill)
        ref = reference_last_logits(model, full, stats.kept_indices, n)
        assert (logits.float() - ref).abs().max().item() <= 1e-5, f"step {step}"


@pytest.mark.parametrize("family,types,layer", CASES)
def test_pruned_padded_batch_equals_single_runs(family, types, layer):
    model, make = _hybrid(family, types)
    batch = make(batch=3)
    own = _batch_vs_singles(model, batch)
    if own > 1e-5:
        pytest.skip(f"the unpatched model's padded batch differs from its single runs by {own:.1e}")
    with tokred.patch(model, "fastv", layer=layer, keep_ratio=0.5):
        assert _batch_vs_singles(model, batch) <= 1e-5


@pytest.mark.parametrize(
    "types,strategy,options,match",
    [
        ((LIN, LIN, LIN, FULL), "fastv", dict(layer=2), r"reads attention at decoder layers \[1\].*\(\[3\]"),
        ((LIN, FULL, LIN, FULL), "aim-prune", dict(l1=2, l2=3, mode="mask"), "mode='mask'"),
        ((LIN, FULL, LIN, FULL), "random", dict(layer=1, keep_ratio=0.5), r"first attention layer \(1\)"),
    ],
    ids=["scorer-at-linear-layer", "mask-mode", "prune-first-attention-layer"],
)
def test_what_stays_unsafe_is_refused_at_patch_time(types, strategy, options, match):
    model, _ = _hybrid("qwen3_5", types)
    with pytest.raises(UnsupportedModelError, match=match):
        tokred.patch(model, strategy, **options)
    assert "_tokred_handle" not in model.__dict__ and not model.get_decoder()._forward_pre_hooks


def test_pre_llm_reduction_needs_no_attention_layer_before_it():
    """A pre-LLM strategy only shortens the sequence every layer kind sees: no hybrid check applies."""
    model, make = _hybrid("qwen3_5", (LIN, LIN, LIN, FULL))
    inputs = make(batch=1)
    with tokred.patch(model, "random", layer=0, keep_ratio=0.5) as handle, torch.no_grad():
        model(**inputs)
    assert max(handle.stats.tokens_per_layer) < inputs["input_ids"].shape[1]


def test_reference_sliding_window_is_guarded_like_a_sliding_window():
    """Unlimited-OCR's reference sliding attention caches like a sliding window for decoded tokens: pruning is
    refused, before the prefill runs, once the sequence reaches the window (here shrunk below the prompt)."""
    if "unlimited_ocr" not in image_text_families():
        pytest.skip("this transformers has no unlimited_ocr")
    from conftest import _cached

    model, make = _cached("unlimited_ocr")
    inputs = make(batch=1)
    text = model.config.get_text_config()
    window, text.sliding_window = text.sliding_window, inputs["input_ids"].shape[1] - 2
    try:
        with tokred.patch(model, "fastv", layer=2, keep_ratio=0.5) as handle:
            assert handle.adapter.sliding_windows() == [text.sliding_window] * 4
            with pytest.raises(tokred.UnsupportedModeError, match="sliding window"), torch.no_grad():
                model(**inputs)
    finally:
        text.sliding_window = window
