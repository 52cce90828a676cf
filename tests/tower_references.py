"""Compact re-implementations of the [CLS]-attention selections (VTC-CLS, VisionZip, VisPruner), written from the
papers and the issue's description of the official selections (never from the official code), as plainly as
possible: the tower's attention from an eager run with ``output_attentions=True``, keys from the layer's own modules,
then float64 numpy and Python lists, so that they share no code path with tokred's capture or ops."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def eager_tower(model: Any, pixel_values: torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Attention weights (per layer, (n_img, H, T, T)) and hidden states ((n_img, T, C) each, L + 1 of them) of the
    LLaVA model's vision tower, from an eager run that returns its attention weights."""
    tower = model.model.vision_tower
    old = tower.config._attn_implementation
    tower.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = tower(pixel_values, output_attentions=True, output_hidden_states=True)
    finally:
        tower.set_attn_implementation(old)
    return [a.double().numpy() for a in out.attentions], [h.double().numpy() for h in out.hidden_states]


def feature_layer(model: Any) -> int:
    """0-based tower layer producing ``hidden_states[f]`` for the deepest feature layer ``f``."""
    n = model.config.vision_config.num_hidden_layers
    layers = model.config.vision_feature_layer
    layers = layers if isinstance(layers, list) else [layers]
    return max(n + f if f < 0 else f - 1 for f in layers)


def layer_keys(model: Any, hidden_in: torch.Tensor, layer: int) -> np.ndarray:
    """Keys of tower layer ``layer`` for its input hidden states (n_img, T, C): its first norm, then its key
    projection (bias included), as (n_img, H, T, D)."""
    tower = model.model.vision_tower
    tower = getattr(tower, "vision_model", tower)
    block = (getattr(tower.encoder, "layers", None) or tower.encoder.layer)[layer]
    norm = getattr(block, "layer_norm1", None) or block.norm1
    attn = getattr(block, "self_attn", None) or block.attention
    heads = model.config.vision_config.num_attention_heads
    with torch.no_grad():
        k = attn.k_proj(norm(hidden_in))  # (n_img, T, H * D)
    n_img, t, _ = k.shape
    return k.view(n_img, t, heads, -1).transpose(1, 2).double().numpy()


def _top(scores: list[float], k: int) -> list[int]:
    """Indices of the ``k`` largest scores (ties to the lower index)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def ref_vtc_cls(attentions: list[np.ndarray], image: int, layers: list[int], k: int) -> list[int]:
    """VTC-CLS: sum over ``layers`` of the head-mean [CLS] row over the patches; top ``k``, ascending."""
    n = attentions[0].shape[-1] - 1
    score = [sum(float(attentions[layer][image, :, 0, 1 + j].mean()) for layer in layers) for j in range(n)]
    return sorted(_top(score, k))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def ref_visionzip(
    attention: np.ndarray, keys: np.ndarray, dominant: int, contextual: int
) -> tuple[list[int], list[int], list[int]]:
    """VisionZip's groups for one image: ``attention`` (H, T, T) and ``keys`` (H, T, D) of the feature layer.

    Returns the dominant patches (ascending), the targets (patch indices, in order) and, for every remaining patch in
    ascending order, the index of its target in the target list.
    """
    n = attention.shape[-1] - 1
    cls_sum = [float(attention[:, 0, 1 + j].sum()) for j in range(n)]
    dom = sorted(_top(cls_sum, dominant - 1))
    rest = [j for j in range(n) if j not in dom]
    c = min(contextual, len(rest))
    metric = [_unit(keys[:, 1 + j].mean(0)) for j in rest]
    step = max(1, len(rest) // c) if c else 1
    target_pos = list(range(0, len(rest), step))[:c]
    groups = []
    for p in range(len(rest)):
        if not c:
            groups.append(-1)
        elif p in target_pos:
            groups.append(target_pos.index(p))
        else:
            sims = [float(metric[p] @ metric[t]) for t in target_pos]
            groups.append(max(range(c), key=lambda g: (sims[g], -g)))
    return dom, [rest[p] for p in target_pos], groups


def ref_vispruner(attention: np.ndarray, features: np.ndarray, keep: int, important_ratio: float) -> list[int]:
    """VisPruner for one image: ``attention`` (H, T, T) of the feature layer, ``features`` (T, C) pre-projector."""
    n = attention.shape[-1] - 1
    score = [float(attention[:, 0, 1 + j].mean()) for j in range(n)]
    order = _top(score, n)
    n_imp = int(keep * important_ratio)
    n_div = keep - n_imp
    rest = order[n_imp:]
    unit = {j: _unit(features[1 + j]) for j in range(n)}
    while n_div > 0 and len(rest) > n_div:
        r = min(8, len(rest) - n_div)
        even, odd = rest[0::2], rest[1::2]
        sim = {a: max(float(unit[a] @ unit[b]) for b in odd) for a in even}
        ranked = sorted(even, key=lambda a: (-sim[a], even.index(a)))
        rest = ranked[r:] + odd
    return sorted(order[:n_imp] + rest[:n_div])
