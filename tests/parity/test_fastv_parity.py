"""FastV parity: tokred's ``fastv`` equals a compact re-implementation of FastV's inplace (drop) loop.

Written from the paper (arXiv:2403.06764) and the dossier (algorithms.md §2.1, §2.5), not from the reference code:
layers ``0..K-1`` see every token; layer ``K-1``'s eager attention probabilities, averaged over heads, of the last
prompt token over the image columns rank the image tokens; the ``round(N_v (1 - R))`` best are kept (ascending) with
all text; layers ``K..`` run on the shorter sequence with the kept tokens' original positions; generation reuses
that selection (the Hugging Face version's pruned KV cache). Sharpened attention makes the ranking sensitive.
"""

from __future__ import annotations

import pytest
import torch

from tokred import patch
from tokred.testing.models import tiny_model

pytestmark = pytest.mark.parity


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def _layer(layer, h, cos, sin):
    """One Llama decoder layer with eager causal attention; returns the output and the attention probabilities."""
    attn = layer.self_attn
    n = h.shape[1]
    heads, kv_heads, d = attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim
    x = layer.input_layernorm(h)
    q = attn.q_proj(x).view(1, n, heads, d).transpose(1, 2)
    k = attn.k_proj(x).view(1, n, kv_heads, d).transpose(1, 2)
    v = attn.v_proj(x).view(1, n, kv_heads, d).transpose(1, 2)
    q, k = q * cos[:, None] + _rotate_half(q) * sin[:, None], k * cos[:, None] + _rotate_half(k) * sin[:, None]
    k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
    logits = (q @ k.transpose(-1, -2)) * d**-0.5
    logits = logits.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), torch.finfo(logits.dtype).min)
    probs = torch.softmax(logits.float(), dim=-1)  # (1, H, N, N)
    h = h + attn.o_proj((probs @ v).transpose(1, 2).reshape(1, n, heads * d))
    return h + layer.mlp(layer.post_attention_layernorm(h)), probs


def reference_fastv(model, embeds, visual, k_layer, keep_ratio, prompt_len=None, keep=None):
    """FastV inplace on one sample; ``keep`` (prompt indices) freezes the selection for decode steps."""
    lm = model.model.language_model
    n = embeds.shape[1]
    prompt_len = n if prompt_len is None else prompt_len
    pos = torch.arange(n)
    h, probs = embeds, torch.empty(0)
    for i, layer in enumerate(lm.layers):
        if i == k_layer:
            if keep is None:
                img = visual.nonzero().flatten()
                score = probs[0].mean(0)[prompt_len - 1, img]  # last prompt token's row, image columns
                count = round(len(img) * keep_ratio)
                chosen = img[score.argsort(descending=True, stable=True)[:count]]
                keep = torch.cat([(~visual).nonzero().flatten(), chosen]).sort().values
            rows = torch.cat([keep, torch.arange(prompt_len, n)])  # kept prompt tokens, then generated ones
            h, pos = h[:, rows], pos[rows]
        cos, sin = lm.rotary_emb(h, pos[None])
        h, probs = _layer(layer, h, cos, sin)
    return model.lm_head(lm.norm(h))[0, -1], keep


def _embeds(model, inputs):
    got = {}

    def grab(_m, _a, kwargs):
        got.setdefault("e", kwargs["inputs_embeds"].detach())

    hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return got["e"]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("k_layer", "keep_ratio"), [(2, 0.5), (1, 0.29), (3, 0.125)])
def test_fastv_equals_the_reference_inplace_loop(seed, k_layer, keep_ratio):
    model, make = tiny_model("llava", text_num_hidden_layers=5)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
    inputs = make(batch=1, seed=seed)
    visual = inputs["input_ids"][0] == model.config.image_token_id
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        ref_logits, ref_keep = reference_fastv(model, _embeds(model, inputs), visual, k_layer, keep_ratio)
        with patch(model, "fastv", layer=k_layer, keep_ratio=keep_ratio) as handle:
            out = model.generate(
                **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
            assert torch.equal(handle.stats.kept_indices[k_layer][0], ref_keep)
        torch.testing.assert_close(out.logits[0][0], ref_logits, rtol=0, atol=1e-5)
        for step in range(1, 3):
            ids = out.sequences[:, : n + step]
            ext = _embeds(model, {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)})
            ext_visual = torch.cat([visual, torch.zeros(step, dtype=torch.bool)])
            ref_step, _ = reference_fastv(model, ext, ext_visual, k_layer, keep_ratio, prompt_len=n, keep=ref_keep)
            torch.testing.assert_close(out.logits[step][0], ref_step, rtol=0, atol=1e-5)


def test_fastv_batch_equals_singles():
    """A batch of two equal-length samples keeps, per row, what each sample's reference loop keeps."""
    model, make = tiny_model("llava", text_num_hidden_layers=4)
    first = make(batch=1, seed=3)
    second = {k: v.clone() for k, v in first.items()}
    gen = torch.Generator().manual_seed(4)
    text = second["input_ids"] != model.config.image_token_id
    second["input_ids"][text] = torch.randint(3, 200, (int(text.sum()),), generator=gen)
    second["pixel_values"] = torch.randn(second["pixel_values"].shape, generator=gen)
    batch = {k: torch.cat([first[k], second[k]]) for k in first}
    with torch.no_grad(), patch(model, "fastv", layer=2, keep_ratio=0.5) as handle:
        logits = model(**batch).logits[:, -1]
        kept = handle.stats.kept_indices[2]
    for b, single in enumerate((first, second)):
        visual = single["input_ids"][0] == model.config.image_token_id
        with torch.no_grad():
            ref_logits, ref_keep = reference_fastv(model, _embeds(model, single), visual, 2, 0.5)
        assert torch.equal(kept[b], ref_keep)
        torch.testing.assert_close(logits[b], ref_logits, rtol=0, atol=1e-5)
