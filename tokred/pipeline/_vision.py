"""Vision-tower stage (ToMe): merge tokens inside the encoder layers, between attention and MLP.

Each encoder layer's ``forward`` is overridden on the instance by a re-statement of the stock pre-norm block
(transformers 5.x ``CLIPEncoderLayer.forward``, SigLIP the same, ``Dinov2Layer.forward`` with layer scales; the
layouts are in the transformers seam, `tokred.adapters.hf.VISION_LAYOUTS`) with two additions: proportional
attention (``log size`` passed as the additive attention mask of the stock attention module) and, after the
attention residual, a merge driven by the merger's per-layer budgets with the layer's keys (averaged over heads,
captured by a forward hook on ``k_proj``) as the similarity metric. The class token (CLIP, DINOv2) is protected.

Merging blocks: the merger's schedule is spread over all ``L`` tower layers (as the reference spreads ``r`` over
every block of the ViT), and the layers the projector's features pass through merge: ``vision_feature_layer = f``
gives `merging_blocks` ``L + 1 + f`` for ``f < 0`` (``-1``: all ``L``; ``-2``, LLaVA's: layers ``0..L-2``, since the
last layer's output is not read) and ``f`` for ``f >= 0``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from tokred._components import BaseMerger, MergeContext
from tokred.adapters import hf
from tokred.errors import UnsupportedModelError


def merging_blocks(num_layers: int, feature_layer: int) -> int:
    """How many tower layers merge: those whose output reaches ``hidden_states[feature_layer]``.

    Args:
        num_layers: Tower depth L.
        feature_layer: The model's ``vision_feature_layer`` (index into the L + 1 hidden states).

    Returns:
        ``L + 1 + feature_layer`` for a negative index, else ``feature_layer``, clipped to ``[0, L]``.
    """
    blocks = num_layers + 1 + feature_layer if feature_layer < 0 else feature_layer
    return min(num_layers, max(0, blocks))


def tower_counts(merger: BaseMerger, num_layers: int, num_tokens: int) -> list[int]:
    """Tokens entering each tower layer, then after the last layer's merge (``num_layers + 1`` entries)."""
    counts = getattr(merger, "tower_counts", None)
    if callable(counts):
        return list(counts(num_layers, num_tokens))
    budgets = merger.layer_budgets(num_layers, num_tokens) or [num_tokens] * num_layers
    return [*budgets, budgets[-1]]


class VisionStage:
    """ToMe merging in a CLIP, SigLIP or DINOv2 vision tower.

    Args:
        adapter: The model adapter (its base model must have a ``vision_tower``).
        merger: A ``vision`` merger with ``layer_budgets``.

    Raises:
        UnsupportedModelError: If the tower is not a CLIP, SigLIP or DINOv2 encoder.
    """

    def __init__(self, adapter: Any, merger: BaseMerger) -> None:
        self.adapter = adapter
        self.merger = merger
        tower = adapter.vision_tower()
        layers = hf.vision_encoder_layers(tower) if tower is not None else None
        kinds = {type(layer).__name__ for layer in layers} if layers is not None else set()
        if layers is None or len(kinds) != 1 or next(iter(kinds)) not in hf.VISION_LAYOUTS:
            raise UnsupportedModelError(
                f"vision-tower merging needs a CLIP, SigLIP or DINOv2 tower; {type(adapter.model).__name__} has "
                f"{sorted(kinds) or 'no recognisable tower'}"
            )
        if adapter.model_types and adapter.model_type not in ("llava",):
            raise UnsupportedModelError(
                f"vision-tower merging changes the tower's token count, which {type(adapter.model).__name__}'s "
                "projector cannot take (it expects a fixed grid); supported: LLaVA-style models (llava)"
            )
        feature_layer = adapter.vision_feature_layers()
        if len(feature_layer) > 1:
            raise UnsupportedModelError(
                f"vision-tower merging leaves the tower's layers with different token counts, but "
                f"{type(adapter.model).__name__} concatenates the hidden states of layers {list(feature_layer)} "
                "(vision_feature_layer); use a pre-LLM strategy (aim-merge, pooling, random) for this model"
            )
        self.layers = layers
        self.blocks = merging_blocks(len(layers), feature_layer[0])
        self.layout = hf.VISION_LAYOUTS[next(iter(kinds))]
        self.tower: Any = tower
        self.size: torch.Tensor | None = None
        self.keys: dict[int, torch.Tensor] = {}
        self.budgets: list[int] = []

    def original_counts(self, images: int, placeholders: int) -> list[int] | None:
        """Placeholder count of each image before merging (every image has the same count in these families)."""
        if images == 0 or placeholders % images:
            raise UnsupportedModelError(f"{placeholders} image placeholders cannot be split over {images} images")
        return [placeholders // images] * images

    def install(self) -> list[Callable[[], None]]:
        """Override the layers' forward and hook the key projections; returns undo callables."""
        undo: list[Callable[[], None]] = []
        pre = self.tower.register_forward_pre_hook(self._reset)
        undo.append(pre.remove)
        attn_name = self.layout[1]
        for i, layer in enumerate(self.layers):
            layer.__dict__["forward"] = functools.partial(self._forward, i, layer)
            undo.append(functools.partial(layer.__dict__.pop, "forward", None))
            k_proj = hf.vision_key_module(getattr(layer, attn_name))
            h = k_proj.register_forward_hook(functools.partial(self._grab_keys, i))
            undo.append(h.remove)
        return undo

    def _reset(self, module: Any, args: tuple[Any, ...]) -> None:
        self.size, self.keys, self.budgets = None, {}, []

    def _grab_keys(self, i: int, module: Any, args: tuple[Any, ...], output: torch.Tensor) -> None:
        self.keys[i] = output.detach()  # (B, N, H * D)

    def _forward(self, i: int, layer: Any, hidden: torch.Tensor, mask: Any = None, *args: Any, **kwargs: Any) -> Any:
        """One encoder block with proportional attention and a merge between attention and MLP.

        ``hidden`` (B, N, C) and the stock ``mask`` (unused: CLIP/SigLIP/DINOv2 towers pass none) come positionally.
        """
        norm1, attn, scale1, norm2, mlp, scale2, has_cls = self.layout
        if not self.budgets:
            self.budgets = tower_counts(self.merger, len(self.layers), hidden.shape[1])
        bias = None
        if self.size is not None and getattr(self.merger.config, "prop_attn", True):
            bias = self.size.float().log()[:, None, None, :].to(hidden.dtype)  # (B, 1, 1, N)
        residual = hidden
        x = hf.vision_attention(getattr(layer, attn), getattr(layer, norm1)(hidden), bias, kwargs)
        x = getattr(layer, scale1)(x) if scale1 else x
        h = residual + x  # (B, N, C)
        target = self.budgets[i + 1] if i < self.blocks else h.shape[1]
        if target < h.shape[1]:
            h = self._merge(i, layer, h, target, has_cls)
        x = getattr(layer, mlp)(getattr(layer, norm2)(h))
        x = getattr(layer, scale2)(x) if scale2 else x
        return h + x

    def _merge(self, i: int, layer: Any, h: torch.Tensor, target: int, has_cls: bool) -> torch.Tensor:
        b, n, _ = h.shape
        heads = hf.attention_heads(getattr(layer, self.layout[1]))
        metric = self.keys.pop(i).reshape(b, n, heads, -1).mean(2)  # (B, N, D)
        protected = None
        if has_cls:
            protected = torch.zeros(b, n, dtype=torch.bool, device=h.device)
            protected[:, 0] = True
        ctx = MergeContext(
            target=target, metric=metric, size=self.size, protected=protected, layer=i, num_layers=len(self.layers)
        )
        res = self.merger.merge(h, ctx)
        self.size = res.size if res.size is not None else torch.ones(b, res.x.shape[1], device=h.device)
        return res.x
