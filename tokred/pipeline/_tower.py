"""Tower attention for pre-LLM mergers: the vision tower's class-token attention, keys and pre-projector features.

A merger that declares ``tower_inputs`` gets a [`TowerContext`][tokred.TowerContext] per image. During the stock
image-feature call, forward hooks on the query and key projections of the tower layers it needs keep the class
token's query row and every token's keys (the projections' own outputs: nothing is recomputed, the tower keeps its
attention kernel, SDPA included, and ``output_attentions`` is never asked for); the softmax rows are computed
afterwards (`tokred.ops.tower.cls_attention_rows`). The pre-projector features come from the tower hidden states the
feature call returns, concatenated over the feature layers as the projector reads them. Nothing is hooked for any
other merger. Every transformers name is asked of the seam (`tokred.adapters.hf`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from tokred._components import BaseMerger, TowerContext
from tokred.adapters import hf
from tokred.errors import ConfigError, UnsupportedModelError
from tokred.ops.tower import cls_attention_rows

#: What a merger may declare in ``tower_inputs``.
TOWER_INPUTS = frozenset({"cls_attention", "keys", "features"})
_ALTERNATIVES = "divprune, cdpruner, pooling or random, which need no class token"


def tower_feature_layer(num_layers: int, feature_layers: list[int]) -> int:
    """0-based tower layer whose output is ``hidden_states[f]`` for the deepest of the model's feature layers ``f``.

    ``hidden_states`` has ``L + 1`` entries (the embeddings first), so ``f < 0`` is layer ``L + f`` and ``f > 0`` is
    layer ``f - 1`` (LLaVA's ``-2``: the second-to-last layer).
    """
    layers = [num_layers + f if f < 0 else f - 1 for f in feature_layers]
    if any(not 0 <= x < num_layers for x in layers):
        raise UnsupportedModelError(
            f"vision_feature_layer {feature_layers} does not name a layer of the {num_layers}-layer vision tower "
            "(the embeddings carry no attention)"
        )
    return max(layers)


class TowerCapture:
    """Captures what a merger declares in ``tower_inputs`` from a LLaVA-style model's CLIP or DINOv2 tower.

    Args:
        adapter: The model adapter.
        merger: A ``pre_llm`` merger with a non-empty ``tower_inputs``.

    Raises:
        ConfigError: If the merger declares an unknown input or asks for a layer the tower does not have.
        UnsupportedModelError: If the model is not LLaVA-style, its tower is not CLIP/DINOv2, the tower has no
            class token (SigLIP), or the projector reads the class token as a visual token (``"full"``).
    """

    def __init__(self, adapter: Any, merger: BaseMerger) -> None:
        self.merger = merger
        self.needs = frozenset(merger.tower_inputs)
        unknown = sorted(self.needs - TOWER_INPUTS)
        if unknown:
            raise ConfigError(
                f"merger '{merger.name}' declares unknown tower_inputs {unknown}; valid: {sorted(TOWER_INPUTS)}"
            )
        self.layers_mod = self._check_model(adapter, merger.name)
        self.base = adapter.base
        self.num_layers = len(self.layers_mod)
        self.feature_layers = adapter.vision_feature_layers()
        self.feature_layer = tower_feature_layer(self.num_layers, self.feature_layers)
        wanted = merger.tower_layers(self.num_layers, self.feature_layer) if "cls_attention" in self.needs else []
        bad = [x for x in wanted if not 0 <= x < self.num_layers]
        if bad:
            raise ConfigError(
                f"merger '{merger.name}' asks for the class-token attention of tower layers {bad}, but the tower has "
                f"layers 0..{self.num_layers - 1}"
            )
        self.cls_layers = tuple(sorted(set(wanted)))
        self.key_layers = set(self.cls_layers) | ({self.feature_layer} if "keys" in self.needs else set())
        self.queries: dict[int, torch.Tensor] = {}
        self.keys: dict[int, torch.Tensor] = {}

    @staticmethod
    def _check_model(adapter: Any, name: str) -> torch.nn.ModuleList:
        model = type(adapter.model).__name__
        tower = adapter.vision_tower()
        layers = hf.vision_encoder_layers(tower) if tower is not None else None
        kinds = sorted({type(x).__name__ for x in layers}) if layers is not None else []
        if layers is None or len(kinds) != 1 or kinds[0] not in hf.VISION_LAYOUTS:
            raise UnsupportedModelError(
                f"strategy '{name}' reads the vision tower's [CLS] attention, which tokred captures from CLIP and "
                f"DINOv2 towers; {model} has {kinds or 'no recognisable tower'}. Use {_ALTERNATIVES}"
            )
        if not hf.vision_has_class_token(layers[0]):
            raise UnsupportedModelError(
                f"strategy '{name}' ranks patches by the vision tower's [CLS] attention, but {model}'s {kinds[0]} "
                f"tower (SigLIP) has no class token; use {_ALTERNATIVES}"
            )
        if adapter.model_type != "llava" or hf.multimodal_projector(adapter.base) is None:
            raise UnsupportedModelError(
                f"strategy '{name}' maps tower tokens one-to-one onto the projector's inputs, which tokred supports "
                f"for LLaVA-style models (llava); {model} is '{adapter.model_type}'. Use {_ALTERNATIVES}"
            )
        if hf.feature_select_strategy(adapter.config) != "default":
            raise UnsupportedModelError(
                f"strategy '{name}' needs the class token dropped before the projector (vision_feature_select_strategy"
                f"='default'); {model} feeds it to the LLM as a visual token"
            )
        return layers

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Hook the projections of the needed layers for the duration of one image-feature call."""
        self.queries, self.keys = {}, {}
        handles = []
        try:
            for i in sorted(self.key_layers):
                attn = hf.vision_layer_attention(self.layers_mod[i])
                if i in self.cls_layers:
                    q = hf.vision_query_module(attn).register_forward_hook(
                        functools.partial(self._grab, self.queries, i)
                    )
                    handles.append(q)
                k = hf.vision_key_module(attn).register_forward_hook(functools.partial(self._grab, self.keys, i))
                handles.append(k)
            yield
        finally:
            for h in handles:
                h.remove()

    @staticmethod
    def _grab(store: dict[int, torch.Tensor], i: int, module: Any, args: Any, output: torch.Tensor) -> None:
        store[i] = output.detach()  # (n_img, T, H * D)

    def contexts(self, out: Any, counts: list[int]) -> list[TowerContext]:
        """One context per image (rows of the feature call), after ``capture``; ``counts`` are the feature rows.

        Raises:
            ConfigError: If the tower's token count does not match an image's features plus the class token.
        """
        heads = hf.attention_heads(hf.vision_layer_attention(self.layers_mod[0]))
        feats = self._features(out) if "features" in self.needs else None
        some = feats if feats is not None else self.keys[min(self.key_layers)]  # (n_img, T, ...)
        n_img, t = int(some.shape[0]), int(some.shape[1])
        if n_img != len(counts) or any(c + 1 != t for c in counts):
            raise ConfigError(
                f"strategy '{self.merger.name}': the tower has {t} tokens for each of {n_img} images, but the LLM gets "
                f"{counts} features; expected one class token plus one feature per patch"
            )
        ctx = TowerContext(self.cls_layers, self.feature_layer, self.num_layers)
        if self.cls_layers:
            ctx.cls_attention = torch.stack([self._cls_rows(i, heads) for i in self.cls_layers], 1)  # (n, L_c, H, T)
        if "keys" in self.needs:
            k = self.keys[self.feature_layer]
            ctx.keys = k.view(n_img, t, heads, -1).transpose(1, 2)  # (n_img, H, T, D)
        if "features" in self.needs:
            ctx.features, ctx.project = feats, hf.multimodal_projector(self.base)
        return [ctx.row(i) for i in range(n_img)]

    def _cls_rows(self, layer: int, heads: int) -> torch.Tensor:
        """Softmax of the class token's query over all tokens at ``layer``, shape (n_img, H, T)."""
        attn = hf.vision_layer_attention(self.layers_mod[layer])
        q, k = self.queries[layer][:, :1], self.keys[layer]  # (n_img, 1, H * D), (n_img, T, H * D)
        n_img, t = int(k.shape[0]), int(k.shape[1])
        q = q.view(n_img, 1, heads, -1).transpose(1, 2)  # (n_img, H, 1, D)
        k = k.view(n_img, t, heads, -1).transpose(1, 2)  # (n_img, H, T, D)
        scale = hf.vision_attention_scale(attn, int(q.shape[-1]))
        return cls_attention_rows(q, k, scale)

    def _features(self, out: Any) -> torch.Tensor:
        """What the projector would read with the class token kept: the feature layers' hidden states, concatenated,
        shape (n_img, T, C_v)."""
        states = hf.tower_hidden_states(out)
        if states is None:
            raise ConfigError(
                f"strategy '{self.merger.name}' needs the vision tower's hidden states, which the model's "
                "image-feature call did not return"
            )
        return torch.cat([states[f] for f in self.feature_layers], dim=-1)
