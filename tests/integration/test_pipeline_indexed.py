"""Decoders with DeepSeek-sparse-attention layers (issue 14 items 4 and 7): multi-head latent attention whose
lightning indexer keeps its own key cache and picks each query's top-k keys (Dots 3 Note, HY-V4-VL, Mistral Large 4).
Pre-LLM strategies run on them (the LLM sees fewer tokens, every layer kind handles a shorter sequence); in-LLM
pruning is refused at patch time, naming the indexer, the model untouched. The tiny models select sparsely (top-8
keys of a longer prompt), so the cached-versus-no-cache checks cover the indexer cache."""

from __future__ import annotations

import functools

import pytest
import torch

import tokred
from tokred.errors import UnsupportedModelError
from tokred.testing.generic import generic_tiny_model, image_text_families

pytestmark = pytest.mark.integration

GEN = dict(max_new_tokens=3, do_sample=False)
FAMILIES = ["dots3_note", "hy_v4_vl", "mistral_large4"]


@functools.cache
def _tiny(family: str):
    if family not in image_text_families():
        pytest.skip(f"this transformers has no {family}")
    model, make, _ = generic_tiny_model(family)
    return model, make


def _cache_gap(model, inputs: dict) -> float:
    """Largest gap between cached generate() logits and no-cache forwards on prompt + generated, at every step."""
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs, **GEN, output_logits=True, return_dict_in_generate=True)
        refs = [model(**_extend(inputs, out.sequences[:, n : n + s]), use_cache=False).logits[:, -1] for s in range(3)]
    return max((lg.float() - ref.float()).abs().max().item() for lg, ref in zip(out.logits, refs))


def _extend(inputs: dict, gen: torch.Tensor) -> dict:
    full = dict(inputs)
    full["input_ids"] = torch.cat([inputs["input_ids"], gen], 1)
    for key in ("attention_mask", "mm_token_type_ids", "token_type_ids"):
        if key in full:
            fill = 1 if key == "attention_mask" else 0
            full[key] = torch.nn.functional.pad(inputs[key], (0, gen.shape[1]), value=fill)
    return full


RANDOM = ("random", dict(layer=0, keep_ratio=0.5, seed=1))
#: (family, strategy, options): pooling where the tiny model's features form a grid (HY-V4-VL's 6 per image do not).
PRE_LLM = [
    *(pytest.param(f, *RANDOM, id=f"{f}-random") for f in FAMILIES),
    *(pytest.param(f, "pooling", {}, id=f"{f}-pooling") for f in ("dots3_note", "mistral_large4")),
    pytest.param("mistral_large4", "aim-merge", {}, id="mistral_large4-aim-merge"),
]


@pytest.mark.parametrize("family,strategy,options", PRE_LLM)
def test_pre_llm_reduction_cached_generate_equals_no_cache(family, strategy, options):
    """On a left-padded batch: the decoder sees fewer tokens, its sparse top-k really selects (fewer keys than the
    prompt), and cached generate() logits equal a no-cache forward of the patched model at every step."""
    model, make = _tiny(family)
    inputs = make(batch=2)
    n = inputs["input_ids"].shape[1]
    assert model.config.get_text_config().index_topk < n
    with tokred.patch(model, strategy, **options) as handle:
        with torch.no_grad():
            model(**inputs)
        assert max(handle.stats.tokens_per_layer) < n
        gap = _cache_gap(model, inputs)
    if gap > 1e-4 and _cache_gap(model, inputs) > 1e-4:  # tiny Dots 3: its own decode drifts 8e-3 at step 2
        pytest.skip(f"the unpatched model's cached generate differs from no-cache too (here {gap:.1e})")
    assert gap <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_in_llm_pruning_is_refused_naming_the_indexer(family):
    model, _ = _tiny(family)
    with pytest.raises(UnsupportedModelError, match=r"indexed_attention.*lightning indexer.*pre-LLM strategy"):
        tokred.patch(model, "fastv", layer=2, keep_ratio=0.5)
    assert "_tokred_handle" not in model.__dict__ and not model.get_decoder()._forward_pre_hooks
