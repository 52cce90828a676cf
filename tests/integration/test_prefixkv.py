"""PrefixKV and the KV stage: identity at retention 1, per-layer cache sizes, the selection against an independent
re-implementation (eager ``output_attentions``), and decode logits against a no-cache reference that hides each
layer's evicted prompt keys from the generated tokens only (LLaVA, Qwen2-VL, left-padded batches)."""

from __future__ import annotations

import functools

import pytest
import torch

import tokred
from tokred.adapters import hf
from tokred.calibration import make_recipe, save_recipe
from tokred.errors import ConfigError
from tokred.testing.models import tiny_model

FAMILIES = ["llava", "qwen2_vl"]
RATIOS = [0.8, 0.3, 0.6, 0.45]


@functools.cache
def _model(family):
    return tiny_model(family)


def _recipe(tmp_path, layers, ratios=RATIOS):
    per_layer = (list(ratios) * layers)[:layers]
    recipe = make_recipe("prefixkv", "tiny", layers, {"retention": 0.5}, per_layer=per_layer)
    return str(save_recipe(tmp_path / "prefixkv.json", recipe)), per_layer


def _extend(inputs, new_ids):
    """The prompt followed by generated ids, for a no-cache forward."""
    out = dict(inputs)
    b, g = new_ids.shape
    out["input_ids"] = torch.cat([inputs["input_ids"], new_ids], 1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones(b, g, dtype=torch.long)], 1)
    if "mm_token_type_ids" in inputs:
        out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros(b, g, dtype=torch.long)], 1)
    return out


def _independent_keep(model, inputs, ratios, first=4, last=1):
    """The paper's selection, re-implemented from eager attention weights of the unpatched model."""
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation("sdpa")
    real = inputs["attention_mask"].bool()  # (B, N)
    keeps = []
    for layer, att in enumerate(out.attentions):  # (B, H, N, N)
        imp = (att.float().mean(1) * real[:, :, None]).sum(1)  # (B, N) summed over real query rows
        rows = []
        for b in range(real.shape[0]):
            idx = torch.nonzero(real[b])[:, 0]
            n = idx.numel()
            k = max(n - round((1 - ratios[layer]) * n), min(n, first + last))
            prot = torch.cat([idx[:first], idx[n - last :]])
            mid = idx[first : n - last]
            best = mid[imp[b, mid].argsort(descending=True, stable=True)[: k - prot.numel()]]
            rows.append(torch.cat([prot, best]).sort().values)
        keeps.append(rows)
    return keeps


def _reference_logits(model, inputs, new_ids, keeps):
    """Last-token logits of prompt + ``new_ids`` without cache, each layer hiding its evicted prompt keys from the
    generated rows (prompt rows see the whole prompt, as in the prefill)."""
    full = _extend(inputs, new_ids)
    n = inputs["input_ids"].shape[1]
    layers = model.get_decoder().layers

    def hook(i, mod, args, kwargs):
        call = hf.CallArgs(args, kwargs)
        mask = call.attention_mask.clone()  # (B, 1, T, T) additive
        for b, kept in enumerate(keeps[i]):
            hidden = torch.ones(n, dtype=torch.bool)
            hidden[kept] = False
            cols = torch.nonzero(hidden)[:, 0]
            mask[b, :, n:, cols] = torch.finfo(mask.dtype).min
        call.attention_mask = mask
        return call.result()

    model.set_attn_implementation("eager")
    handles = [
        layer.register_forward_pre_hook(functools.partial(hook, i), with_kwargs=True) for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            return model(**full, use_cache=False).logits[:, -1].float()
    finally:
        for h in handles:
            h.remove()
        model.set_attn_implementation("sdpa")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [1, 2])
def test_retention_one_is_bitwise_identical(family, batch):
    model, make = _model(family)
    inputs = make(batch=batch, seed=3)
    with torch.no_grad():
        ref = model.generate(
            **inputs, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        with tokred.patch(model, "prefixkv", retention=1.0):
            out = model.generate(
                **inputs, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
    assert torch.equal(ref.sequences, out.sequences)
    assert all(torch.equal(a, b) for a, b in zip(ref.logits, out.logits))


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_holds_each_layers_share_and_the_papers_selection(family, tmp_path):
    model, make = _model(family)
    inputs = make(batch=2, seed=1)
    layers = model.config.text_config.num_hidden_layers
    path, ratios = _recipe(tmp_path, layers)
    with torch.no_grad():
        full = hf.output_cache(model(**inputs, use_cache=True))
        with tokred.patch(model, "prefixkv", recipe=path) as handle:
            cache = hf.output_cache(model(**inputs, use_cache=True))
    keeps = _independent_keep(model, inputs, ratios)
    n_real = inputs["attention_mask"].sum(1).tolist()
    for i, (entry, ref_entry) in enumerate(zip(cache.layers, full.layers)):
        want = [max(n - round((1 - ratios[i]) * n), 5) for n in n_real]
        assert entry.keys.shape[2] == max(want) == handle.kv_tokens_per_layer[i]
        for b in range(2):
            got = entry.keys[b, :, : want[b]] if n_real[b] == max(n_real) else None
            kept = ref_entry.keys[b][:, keeps[i][b]]  # (H_kv, k, D): the independent selection
            # the row's kept real entries are the independent selection (padding fills the rest of a short row)
            real_rows = [
                j
                for j in range(entry.keys.shape[2])
                if any(torch.equal(entry.keys[b, :, j], kept[:, m]) for m in range(kept.shape[1]))
            ]
            assert len(real_rows) == want[b], (i, b)
            if got is not None:
                assert torch.equal(got, kept)
    assert cache.get_seq_length() == inputs["input_ids"].shape[1]  # positions continue from the original length


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_equals_masked_no_cache_reference(family, tmp_path):
    model, make = _model(family)
    inputs = make(batch=2, seed=2)
    layers = model.config.text_config.num_hidden_layers
    path, ratios = _recipe(tmp_path, layers)
    with torch.no_grad(), tokred.patch(model, "prefixkv", recipe=path):
        out = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    keeps = _independent_keep(model, inputs, ratios)
    n = inputs["input_ids"].shape[1]
    for step in (1, 2):
        ref = _reference_logits(model, inputs, out.sequences[:, n : n + step], keeps)
        assert (out.logits[step].float() - ref).abs().max() < 1e-4, step


def test_padded_batch_equals_single_runs(tmp_path):
    model, make = _model("llava")
    inputs = make(batch=2, seed=1)
    path, _ = _recipe(tmp_path, model.config.text_config.num_hidden_layers)
    with torch.no_grad(), tokred.patch(model, "prefixkv", recipe=path):
        both = model.generate(
            **inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        for b in range(2):
            keep = inputs["attention_mask"][b].bool()
            one = {k: inputs[k][b : b + 1][:, keep] for k in ("input_ids", "attention_mask")}
            one["pixel_values"] = inputs["pixel_values"][b : b + 1]
            single = model.generate(
                **one, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
            assert torch.equal(single.sequences[0, -4:], both.sequences[b, -4:])
            assert max((s[0] - a[b]).abs().max() for s, a in zip(single.logits, both.logits)) < 1e-4


def test_missing_recipe_is_one_clear_error():
    model, _ = _model("llava")
    with pytest.raises(ConfigError, match="tokred calibrate prefixkv"):
        tokred.patch(model, "prefixkv", retention=0.5)


def test_recipe_for_another_depth_is_refused(tmp_path):
    model, _ = _model("llava")
    path, _ = _recipe(tmp_path, 7)
    with pytest.raises(ConfigError, match="7 decoder layers"):
        tokred.patch(model, "prefixkv", recipe=path)
