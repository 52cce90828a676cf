"""End-to-end tests of tokred.patch on tiny models of every supported family."""

from __future__ import annotations

import pytest
import torch
from conftest import reference_last_logits

import tokred
from tokred.adapters import hf
from tokred.pipeline import patch
from tokred.testing.models import tiny_model
from tokred.testing.reference import extend_prompt

pytestmark = pytest.mark.integration

GEN = dict(max_new_tokens=3, do_sample=False)
PRUNING = [
    pytest.param("fastv", dict(layer=2, keep_ratio=0.5), id="fastv"),
    pytest.param("random", dict(layer=2, keep_ratio=0.5, seed=3), id="random-layer2"),
    pytest.param("aim-prune", dict(l1=1, l2=4), id="aim-prune-3-stages"),
]


def _generate(model, inputs, **kw):
    with torch.no_grad():
        return model.generate(**inputs, **GEN, output_logits=True, return_dict_in_generate=True, **kw)


@pytest.mark.parametrize(
    "strategy,options", [("none", {}), ("fastv", dict(keep_ratio=1.0)), ("fastv", dict(keep_ratio=1.0, layer=1))]
)
def test_keep_everything_is_bitwise_identical(tiny, strategy, options):
    model, make = tiny
    inputs = make(batch=2)
    with torch.no_grad():
        ref = model(**inputs).logits
        ref_gen = _generate(model, inputs)
        with patch(model, strategy, **options) as handle:
            out = model(**inputs).logits
            gen = _generate(model, inputs)
            assert handle.stats.tokens_per_layer == [inputs["input_ids"].shape[1]] * 4
        after = model(**inputs).logits
    assert torch.equal(out, ref)
    assert torch.equal(gen.sequences, ref_gen.sequences)
    assert all(torch.equal(a, b) for a, b in zip(gen.logits, ref_gen.logits))
    assert torch.equal(after, ref)


@pytest.mark.parametrize("strategy,options", PRUNING)
def test_in_llm_generate_matches_no_cache_reference(tiny, strategy, options):
    model, make = tiny
    inputs = make(batch=1)
    n = inputs["input_ids"].shape[1]
    with patch(model, strategy, **options) as handle:
        out = _generate(model, inputs)
        stats = handle.stats
    keeps = stats.kept_indices
    assert keeps, "nothing was pruned"
    visual = tokred.pipeline.select_adapter(model).visual_mask(inputs["input_ids"])
    for layer, keep in keeps.items():
        kept_mask = torch.zeros_like(visual).scatter(1, keep, True)
        assert bool(kept_mask[~visual].all()), "a text token was dropped"
        assert bool((keep.diff(dim=1) > 0).all()), "kept indices must be ascending original positions"
        assert stats.tokens_per_layer[layer] == keep.shape[1]
    seqs = out.sequences
    for step, logits in enumerate(out.logits):
        full = extend_prompt(model, inputs, seqs[:, n : n + step])  # PaliGemma: generated tokens are its suffix
        ref = reference_last_logits(model, full, keeps, n)
        assert (logits - ref).abs().max().item() <= 1e-5, f"step {step}"


@pytest.mark.parametrize("strategy,options", PRUNING[:2])
def test_pruned_layer_cache_holds_only_kept_tokens(tiny, strategy, options):
    model, make = tiny
    inputs = make(batch=2)
    n = inputs["input_ids"].shape[1]
    with patch(model, strategy, **options) as handle, torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
        cache = hf.output_cache(out)
        kv = [i for i, layer in enumerate(cache.layers) if getattr(layer, "keys", None) is not None]
        lengths = [cache.layers[i].get_seq_length() for i in kv]  # hybrid decoders: state layers hold no tokens
        tokens = handle.stats.tokens_per_layer
    generated = 2  # the last token is never fed back
    assert kv[0] == 0 and lengths == [tokens[i] + generated for i in kv]
    assert lengths[0] == n + generated and min(lengths) < n + generated


@pytest.mark.parametrize("strategy,options", PRUNING[:2])
def test_left_padded_batch_equals_single_runs(tiny, strategy, options):
    model, make = tiny
    batch = make(batch=3)
    with patch(model, strategy, **options):
        err = _batch_vs_singles(model, batch)
    if err > 1e-5:
        own = _batch_vs_singles(model, batch)  # the premise: the unpatched model is batch-invariant
        if own > 1e-5:
            pytest.skip(f"the unpatched model's padded batch differs from its single runs by {own:.1e}")
    assert err <= 1e-5


def _batch_vs_singles(model, batch):
    """Largest logit difference between ``generate`` on the left-padded batch and on each sample alone."""
    out = _generate(model, batch)
    err = 0.0
    for b in range(batch["input_ids"].shape[0]):
        keep = batch["attention_mask"][b].bool()
        one = {
            k: (
                v[b : b + 1][:, keep]
                if k in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
                else v
            )
            for k, v in batch.items()
        }
        one.update(_sample_images(batch, b))
        single = _generate(model, one)
        for step, logits in enumerate(out.logits):
            err = max(err, (logits[b] - single.logits[step][0]).abs().max().item())
    return err


def _sample_images(batch, b):
    """Per-sample image inputs of the tiny builders (one image per sample)."""
    out = {}
    for key, value in batch.items():
        if key in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"):
            continue
        n = batch["input_ids"].shape[0]
        if key == "pixel_values" and value.shape[0] != n and value.shape[0] % n == 0:  # Qwen: all patches stacked
            per = value.shape[0] // n
            out[key] = value[b * per : (b + 1) * per]
        else:
            out[key] = value[b : b + 1]
    return out


def test_mask_mode_matches_drop_mode_prefill(tiny):
    """Mask mode (the reference loop) and drop mode agree up to the first pruning layer; after it their PageRank
    differs by design (mask: pruned tokens stay query rows, drop: survivors only; see tests/parity/test_aim_parity.py),
    and whenever the kept sets agree at every layer the kept tokens' hidden states, hence the logits, agree."""
    model, make = tiny
    inputs = make(batch=2)
    if tokred.pipeline.select_adapter(model).non_attention_layers():  # hybrid: a masked token still enters a state
        with pytest.raises(tokred.UnsupportedModelError, match="mode='mask'"):
            patch(model, "aim-prune", l1=1, l2=4, mode="mask")
        return
    with torch.no_grad():
        with patch(model, "aim-prune", l1=1, l2=4) as drop:
            a = model(**inputs).logits[:, -1]
            keeps = drop.stats.kept_indices
        with patch(model, "aim-prune", l1=1, l2=4, mode="mask") as mask:
            b = model(**inputs).logits[:, -1]
            assert mask.stats.tokens_per_layer == [inputs["input_ids"].shape[1]] * 4
            masked = mask.stats.kept_indices
    first = min(keeps)
    assert sorted(masked) == sorted(keeps) and torch.equal(keeps[first], masked[first])
    if all(torch.equal(keeps[i], masked[i]) for i in keeps):
        assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "layer_types",
    [
        ["sliding_attention", "sliding_attention", "full_attention", "full_attention"],  # first full layer pruned
        ["full_attention", "full_attention", "sliding_attention", "sliding_attention"],  # first sliding layer pruned
    ],
)
def test_masks_sized_from_a_pruned_layer_stay_right(layer_types):
    """transformers sizes every full-attention mask from the first full-attention layer's cache; when fastv prunes
    that layer, decode must still see every original position (the cache is pinned to layer 0's sizes)."""
    model, make = tiny_model("gemma3", text_layer_types=layer_types)
    inputs = make(batch=2)
    n = inputs["input_ids"].shape[1]
    with patch(model, "fastv", layer=2, keep_ratio=0.5) as handle:
        out = _generate(model, inputs)
        keeps = handle.stats.kept_indices
    assert min(handle.stats.tokens_per_layer) < n
    for step, logits in enumerate(out.logits):
        full = dict(inputs)
        full["input_ids"] = torch.cat([inputs["input_ids"], out.sequences[:, n : n + step]], 1)
        for key in ("attention_mask", "token_type_ids"):
            full[key] = torch.nn.functional.pad(inputs[key], (0, step), value=1 if key == "attention_mask" else 0)
        ref = reference_last_logits(model, full, keeps, n)
        assert (logits - ref).abs().max().item() <= 1e-5, f"step {step}"


@pytest.mark.parametrize(
    "strategy,options",
    [
        ("aim", {}),
        ("random", dict(layer=0, keep_ratio=0.5, seed=3)),
        ("random", dict(layer=2, keep_ratio=0.5, seed=3)),
        ("pooling", {}),
        ("fastv", {}),
    ],
    ids=["aim", "random-layer0", "random-layer2", "pooling", "fastv"],
)
def test_qwen3_vl_batch_equals_single_runs(strategy, options):
    """Qwen3-VL (DeepStack + M-RoPE): every common strategy, a left-padded batch of 3 equals three single runs."""
    from conftest import _cached

    test_left_padded_batch_equals_single_runs(_cached("qwen3_vl"), strategy, options)
