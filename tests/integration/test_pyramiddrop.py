"""PyramidDrop against an independent re-implementation of its selection, and the ``reindex`` position policy.

The re-implementation below runs a tiny LLaVA's decoder layer by layer by hand (its own RMSNorm, q/k projections and
RoPE at each stage boundary, the last query's softmax over all keys, head mean, top ``int(N * ratio)`` image
columns), renumbering positions after every drop as the reference does, and never touches tokred's pipeline.
"""

from __future__ import annotations

import pytest
import torch
from conftest import HAND_WRITTEN, _cached, reference_last_logits
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import tokred
from tokred.errors import ConfigError, UnsupportedModelError
from tokred.testing.models import tiny_model
from tokred.testing.reference import capture_decoder_inputs

pytestmark = pytest.mark.integration

GEN = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)


def _stage_scores(layer, h: torch.Tensor, pos: torch.Tensor, rope) -> torch.Tensor:
    """Head-mean softmax row of the last token over all keys, from ``layer``'s own norm, q/k and RoPE; (n,)."""
    attn = layer.self_attn
    x = layer.input_layernorm(h)  # (1, n, C)
    n, d = x.shape[1], attn.head_dim
    q = attn.q_proj(x).view(1, n, -1, d).transpose(1, 2)  # (1, H, n, D)
    k = attn.k_proj(x).view(1, n, -1, d).transpose(1, 2)  # (1, H_kv, n, D)
    cos, sin = rope(x, pos[None])
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA: each key head serves its query heads
    probs = torch.softmax((q[:, :, -1:] @ k.transpose(-1, -2)).float() * d**-0.5, dim=-1)  # (1, H, 1, n)
    return probs.mean(dim=1)[0, 0]


def pyramiddrop_by_hand(model, inputs, layer_list, ratios, reindex=True):
    """PyramidDrop on one unpadded sample: ``({layer: kept original indices (1, K)}, last-token logits (1, V))``."""
    embeds, _, _ = capture_decoder_inputs(model, inputs)
    dec = model.get_decoder()
    visual = inputs["input_ids"][0] == model.config.image_token_id  # (N,)
    n_img = int(visual.sum())
    h, idx = embeds, torch.arange(embeds.shape[1])  # original index of every current row
    pos = idx.clone()
    keeps = {}
    with torch.no_grad():
        for i, layer in enumerate(dec.layers):
            if i in layer_list:
                k = int(n_img * ratios[layer_list.index(i)])
                scores = _stage_scores(layer, h, pos, dec.rotary_emb)
                img = torch.nonzero(visual[idx])[:, 0]
                top = img[torch.topk(scores[img], k).indices]
                local = torch.nonzero(~visual[idx])[:, 0]
                local = torch.cat([local, top]).sort().values
                idx, h = idx[local], h[:, local]
                pos = torch.arange(len(idx)) if reindex else idx.clone()
                keeps[i] = idx[None]
            n = h.shape[1]
            mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
            h = layer(h, attention_mask=mask, position_embeddings=dec.rotary_emb(h, pos[None]), position_ids=pos[None])
            h = h[0] if isinstance(h, tuple) else h
        return keeps, model.lm_head(dec.norm(h[:, -1:]))[:, -1]


CASES = [
    pytest.param({}, 4, (1, 2, 3), (0.5, 0.25, 0.125), id="defaults-4-layers"),
    pytest.param({}, 8, (2, 4, 6), (0.5, 0.25, 0.125), id="defaults-8-layers"),
    pytest.param(dict(layer_list=(1, 3), image_token_ratio_list=(0.6, 0.3)), 4, (1, 3), (0.6, 0.3), id="custom"),
    pytest.param(dict(ratio=0.4), 4, (1, 2, 3), (0.4, 0.16, 0.064), id="lambda-0.4"),
]


@pytest.mark.parametrize("positions", ["reindex", "original"])
@pytest.mark.parametrize("options,depth,layers,ratios", CASES)
def test_pyramiddrop_equals_hand_written_selection(options, depth, layers, ratios, positions):
    model, make = tiny_model("llava", num_hidden_layers=depth)
    for seed in range(3):
        inputs = make(batch=1, seed=seed)
        keeps, logits = pyramiddrop_by_hand(model, inputs, list(layers), ratios, reindex=positions == "reindex")
        with tokred.patch(model, "pyramiddrop", positions=positions, **options) as handle, torch.no_grad():
            out = model(**inputs).logits[:, -1]
        got = handle.stats.kept_indices
        assert sorted(got) == sorted(keeps), f"seed {seed}"
        for layer in keeps:
            assert torch.equal(got[layer], keeps[layer]), f"seed {seed}, layer {layer}"
        assert (out - logits).abs().max().item() <= 1e-5, f"seed {seed}"


def test_reindex_changes_the_result():
    """The two position policies are really different (so the tests above can tell them apart)."""
    model, make = tiny_model("llava", num_hidden_layers=8)
    inputs = make(batch=1, seed=1)
    with torch.no_grad():
        with tokred.patch(model, "pyramiddrop", positions="reindex"):
            a = model(**inputs).logits[:, -1]
        with tokred.patch(model, "pyramiddrop", positions="original"):
            b = model(**inputs).logits[:, -1]
    assert (a - b).abs().max().item() > 1e-4


@pytest.mark.parametrize("positions", ["reindex", "original"])
def test_generate_matches_no_cache_reference(positions):
    """Decode continues from the renumbered positions: every step's logits equal a no-cache recomputation."""
    model, make = tiny_model("llava", num_hidden_layers=6)
    inputs = make(batch=1, seed=2)
    n = inputs["input_ids"].shape[1]
    with tokred.patch(model, "pyramiddrop", positions=positions) as handle, torch.no_grad():
        out = model.generate(**inputs, **GEN)
        keeps = handle.stats.kept_indices
    assert len(keeps) == 3
    for step, logits in enumerate(out.logits):
        full = dict(inputs, input_ids=out.sequences[:, : n + step])
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        ref = reference_last_logits(model, full, keeps, n, positions=positions)
        assert (logits - ref).abs().max().item() <= 1e-5, f"step {step}"
    if positions == "reindex":  # the reference really depends on the policy
        other = reference_last_logits(model, full, keeps, n, positions="original")
        assert (other - ref).abs().max().item() > 1e-4


@pytest.mark.parametrize("positions", ["reindex", "original"])
def test_left_padded_batch_equals_single_runs(positions):
    model, make = tiny_model("llava", num_hidden_layers=6)
    batch = make(batch=3, seed=1)
    with tokred.patch(model, "pyramiddrop", positions=positions) as handle, torch.no_grad():
        out = model.generate(**batch, **GEN)
        batch_keeps = handle.stats.kept_indices
        for b in range(3):
            real = batch["attention_mask"][b].bool()
            pad = int((~real).sum())
            one = dict(batch, input_ids=batch["input_ids"][b : b + 1][:, real])
            one["attention_mask"] = batch["attention_mask"][b : b + 1][:, real]
            one["pixel_values"] = batch["pixel_values"][b : b + 1]
            single = model.generate(**one, **GEN)
            for layer, keep in handle.stats.kept_indices.items():
                assert torch.equal(batch_keeps[layer][b, pad:] - pad, keep[0]), f"sample {b}, layer {layer}"
            for step, logits in enumerate(out.logits):
                assert (logits[b] - single.logits[step][0]).abs().max().item() <= 1e-5, f"sample {b}, step {step}"


def test_pruned_caches_hold_only_the_stage_tokens():
    from tokred.adapters import hf

    model, make = tiny_model("llava", num_hidden_layers=4)
    inputs = make(batch=2)
    with tokred.patch(model, "pyramiddrop") as handle, torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
        lengths = [hf.cache_layer_length(layer) for layer in hf.cache_layers(hf.output_cache(out))]
    assert lengths == [t + 2 for t in handle.stats.tokens_per_layer]
    assert len(set(lengths)) == 4  # four stages, four cache lengths


def test_bad_options_and_models_are_refused():
    with pytest.raises(ConfigError, match="one ratio per layer_list"):
        tokred.create_strategy("pyramiddrop", layer_list=(1, 2), image_token_ratio_list=(0.5,))
    with pytest.raises(ConfigError, match="non-increasing"):
        tokred.create_strategy("pyramiddrop", image_token_ratio_list=(0.25, 0.5, 0.125))
    with pytest.raises(ConfigError, match="positions"):
        tokred.create_strategy("pyramiddrop", positions="shifted")
    model, _ = tiny_model("qwen2_vl")
    with pytest.raises(UnsupportedModelError, match="M-RoPE"):
        tokred.patch(model, "pyramiddrop")
    tokred.patch(model, "pyramiddrop", positions="original").remove()
    llava, _ = tiny_model("llava", num_hidden_layers=2)
    with pytest.raises(ConfigError, match="ratios for the"):  # scaled boundaries collide on 2 layers
        tokred.patch(llava, "pyramiddrop", image_token_ratio_list=(0.5, 0.25, 0.125))
    with pytest.raises(ConfigError, match="boundaries must be increasing in 1..1"):
        tokred.patch(llava, "pyramiddrop", layer_list=(8, 16, 24))


@pytest.mark.parametrize("family", HAND_WRITTEN)
def test_every_family_generates_like_the_no_cache_reference(family):
    """PyramidDrop on each hand-written tiny family: generate equals the no-cache reference under every position
    policy the family allows (M-RoPE families: original only)."""
    from tokred.pipeline import select_adapter

    model, make = _cached(family)
    inputs = make(batch=1)
    n = inputs["input_ids"].shape[1]
    policies = ["original"] if select_adapter(model).uses_mrope() else ["original", "reindex"]
    for positions in policies:
        with tokred.patch(model, "pyramiddrop", positions=positions) as handle, torch.no_grad():
            out = model.generate(**inputs, **GEN)
            keeps = handle.stats.kept_indices
        assert len(keeps) == 3
        for step, logits in enumerate(out.logits):
            full = dict(inputs, input_ids=out.sequences[:, : n + step])
            full["attention_mask"] = torch.ones_like(full["input_ids"])
            for key in ("token_type_ids", "mm_token_type_ids"):
                if key in full:
                    full[key] = torch.nn.functional.pad(full[key], (0, step))
            ref = reference_last_logits(model, full, keeps, n, positions=positions)
            assert (logits - ref).abs().max().item() <= 1e-5, f"{positions}, step {step}"
