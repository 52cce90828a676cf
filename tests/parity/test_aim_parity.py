"""AIM parity: ``aim-prune`` with ``mode="mask"`` and ``reference_code_offset=True`` equals the reference loop.

The reference prefill and decode loop is re-implemented here from the paper (arXiv:2412.03248 §3.3) and the dossier
(algorithms.md §1.3, §1.5, §1.8), not from the reference code, on the tiny LLaVA's own weights:

* every layer runs eager attention over the full sequence; tokens pruned so far are hidden as keys (their column is
  masked in every row, their own included) but stay in the sequence as query rows;
* the importance of layer ``i`` comes from that layer's masked logits: ``M = softmax(logits / 0.1)``, ``pi = 1/N``
  over all ``N`` tokens, five steps ``pi <- pi M``, RMS over heads;
* after layer ``i``: pruned tokens score -1, text +1, and the ``P + floor(V * retain[i])`` best survive, ``V`` all
  visual positions; the mask applies from layer ``i + 1`` and is reused for the prefix at every decode step, where
  generated tokens are never masked.

The model's attention is sharpened (queries scaled up) so that the kept sets are sensitive to any difference in the
loop. Kept sets must be equal at every layer and the last-token logits within 1e-5, prefill and decode.
"""

from __future__ import annotations

import math

import pytest
import torch

from tokred import patch
from tokred.testing.models import tiny_model

pytestmark = pytest.mark.parity

LAYERS, L1, L2 = 8, 2, 6  # 1-indexed schedule: all visual tokens up to layer 2, none from layer 6


def _retain(i: int) -> float:
    """The reference's per-layer (0-indexed) retain fraction for (L1, L2); exact in binary for L2 - L1 = 4."""
    return 1.0 if i < L1 else max(0.0, 1.0 - (i - L1 + 1) / (L2 - L1))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def reference_loop(model, embeds, visual, masks=None, temperature=0.1, iterations=5):
    """AIM's eager loop on one sample: returns the logits of every row and the key mask used by every layer.

    Args:
        model: The tiny LLaVA.
        embeds: Decoder input embeddings, shape (1, N, C).
        visual: Visual positions, shape (N,) bool.
        masks: Frozen per-layer key masks of a prefix (decode); ``None`` = prefill, decide them.
    """
    lm = model.model.language_model
    n = embeds.shape[1]
    pos = torch.arange(n)[None]
    cos, sin = lm.rotary_emb(embeds, pos)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    allowed = torch.ones(n, dtype=torch.bool)
    used, h = [], embeds
    for i, layer in enumerate(lm.layers):
        if masks is not None:  # decode: the prefix mask of this layer, generated tokens always visible
            m = masks[i]
            allowed = torch.cat([m, torch.ones(n - m.numel(), dtype=torch.bool)])
        used.append(allowed.clone())
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        heads, kv_heads, d = attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim
        q = attn.q_proj(x).view(1, n, heads, d).transpose(1, 2)
        k = attn.k_proj(x).view(1, n, kv_heads, d).transpose(1, 2)
        v = attn.v_proj(x).view(1, n, kv_heads, d).transpose(1, 2)
        q, k = q * cos[:, None] + _rotate_half(q) * sin[:, None], k * cos[:, None] + _rotate_half(k) * sin[:, None]
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        visible = causal & allowed[None, :]  # pruned tokens hidden as keys in every row, still query rows
        logits = (q.float() @ k.float().transpose(-1, -2)) * d**-0.5
        logits = logits.masked_fill(~visible, torch.finfo(torch.float32).min)  # (1, H, N, N)
        out = (torch.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(1, n, heads * d)
        h = h + attn.o_proj(out)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
        if masks is None and i + 1 < len(lm.layers):
            sharp = torch.softmax(logits[0] / temperature, dim=-1)  # (H, N, N)
            pi = torch.full((heads, 1, n), 1.0 / n)  # uniform over all N tokens
            for _ in range(iterations):
                pi = pi @ sharp
            score = pi[:, 0].square().mean(0).sqrt()  # (N,)
            score = torch.where(allowed, score, -1.0)
            score = torch.where(visual, score, 1.0)
            v_all, p = int(visual.sum()), int((~visual).sum())
            keep = p + math.floor(v_all * _retain(i))
            top = score.argsort(descending=True, stable=True)[:keep]
            allowed = allowed & torch.zeros(n, dtype=torch.bool).scatter(0, top, True)
    return model.lm_head(lm.norm(h))[0], used  # (N, vocab)


def _model(seed: int, sharpen: float):
    model, make = tiny_model("llava", text_num_hidden_layers=LAYERS)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(sharpen)
    return model, make(batch=1, seed=seed)


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


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("sharpen", [4.0, 12.0])
def test_mask_mode_equals_the_reference_prefill_and_decode(seed, sharpen):
    model, inputs = _model(seed, sharpen)
    visual = inputs["input_ids"][0] == model.config.image_token_id
    embeds = _embeds(model, inputs)
    with torch.no_grad():
        ref_logits, ref_masks = reference_loop(model, embeds, visual)
        with patch(model, "aim-prune", l1=L1, l2=L2, mode="mask", reference_code_offset=True) as handle:
            out = model.generate(
                **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
            kept = handle.stats.kept_indices
        v_all = int(visual.sum())
        counts = [v_all] + [math.floor(v_all * _retain(i)) for i in range(LAYERS - 1)]  # layer i: retain[i - 1]
        assert sorted(kept) == [i for i in range(1, LAYERS) if counts[i] < counts[i - 1]]
        for i in range(LAYERS):  # the key mask of every layer: the reference's, tokred's kept set
            last = max((j for j in kept if j <= i), default=None)
            tok = torch.ones_like(visual) if last is None else torch.zeros_like(visual).scatter(0, kept[last][0], True)
            assert torch.equal(tok, ref_masks[i]), f"layer {i}"
        torch.testing.assert_close(out.logits[0][0], ref_logits[-1], rtol=0, atol=1e-5)
        with patch(model, "aim-prune", l1=L1, l2=L2, mode="mask", reference_code_offset=True):
            rows = model(**inputs).logits[0]  # (N, vocab): pruned tokens are still rows, computed as the reference does
        torch.testing.assert_close(rows, ref_logits, rtol=0, atol=1e-5)
        # decode: each step equals the reference's no-cache recomputation with the frozen prefill masks
        n = inputs["input_ids"].shape[1]
        for step in range(1, 3):
            ids = out.sequences[:, : n + step]
            full = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
            ext = _embeds(model, full)
            ref_step, _ = reference_loop(
                model, ext, torch.cat([visual, torch.zeros(step, dtype=torch.bool)]), ref_masks
            )
            torch.testing.assert_close(out.logits[step][0], ref_step[-1], rtol=0, atol=1e-5)


def test_the_old_mask_semantics_would_diverge():
    """Guard that the test is sensitive: PageRank over survivors only (drop mode's rule) gives other kept sets."""
    diverged = 0
    for seed in range(4):
        model, inputs = _model(seed, 12.0)
        with torch.no_grad():
            with patch(model, "aim-prune", l1=L1, l2=L2, mode="mask", reference_code_offset=True) as mask:
                a = model(**inputs).logits[:, -1]
                kept_mask = mask.stats.kept_indices
            with patch(model, "aim-prune", l1=L1, l2=L2, mode="drop", reference_code_offset=True) as drop:
                b = model(**inputs).logits[:, -1]
                kept_drop = drop.stats.kept_indices
        diverged += any(not torch.equal(kept_mask[i], kept_drop[i]) for i in kept_mask) or not torch.allclose(a, b)
    assert diverged > 0


def test_mask_mode_batch_equals_reference_singles():
    """A batch of two samples (equal lengths) gives, row by row, each sample's reference loop."""
    model, _ = _model(0, 8.0)
    _, make = tiny_model("llava", text_num_hidden_layers=LAYERS)
    first = make(batch=1, seed=5)
    second = {k: v.clone() for k, v in first.items()}  # same layout, other text tokens and image
    gen = torch.Generator().manual_seed(6)
    text = second["input_ids"] != model.config.image_token_id
    second["input_ids"][text] = torch.randint(3, 200, (int(text.sum()),), generator=gen)
    second["pixel_values"] = torch.randn(second["pixel_values"].shape, generator=gen)
    singles = [first, second]
    batch = {k: torch.cat([s[k] for s in singles]) for k in singles[0]}
    with torch.no_grad():
        with patch(model, "aim-prune", l1=L1, l2=L2, mode="mask", reference_code_offset=True) as handle:
            rows = model(**batch).logits  # (2, N, vocab)
            kept = handle.stats.kept_indices
        for b, single in enumerate(singles):
            visual = single["input_ids"][0] == model.config.image_token_id
            ref, masks = reference_loop(model, _embeds(model, single), visual)
            torch.testing.assert_close(rows[b], ref, rtol=0, atol=1e-5)
            for i in kept:
                assert torch.equal(torch.zeros_like(visual).scatter(0, kept[i][b], True), masks[i])
