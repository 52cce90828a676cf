"""VTC-CLS: keep the patches the vision tower's [CLS] token attends to most, summed over its deeper layers.

Wang et al., "[CLS] Token Tells Everything Needed for Training-free Efficient MLLMs", arXiv:2412.05819. Implemented
from the paper and the tokred dossier (algorithms.md §8), not from the reference code.

Where tokred differs from the reference code: the [CLS] attention comes from hooks on the tower's query and key
projections (the tower keeps its SDPA kernel; the reference switches CLIP to eager attention and asks for
``output_attentions``); every image of a batch is scored on its own (the reference squeezes batch 1); the budget is
a ratio of each image's patches (the reference takes a token count) and an image keeps at least one patch; the
default first layer, 16 of CLIP-L's 24, is scaled to the tower's depth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from pydantic import Field

from tokred._components import (
    BaseMerger,
    ComponentConfig,
    MergeContext,
    MergeResult,
    Strategy,
    TowerInput,
)
from tokred.errors import ConfigError
from tokred.hookspecs import hookimpl
from tokred.ops.counts import keep_count
from tokred.ops.provenance import source_from_keep
from tokred.ops.selection import gather_tokens, topk_keep
from tokred.ops.tower import vtc_cls_scores

#: The reference's default first layer and the depth it was set for (CLIP ViT-L/14-336).
REFERENCE_START, REFERENCE_DEPTH = 16, 24


def need_tower(ctx: MergeContext, merger: str, field: str) -> torch.Tensor:
    """``ctx.tower.<field>``, or one clear error when the merger runs without the tower's context."""
    value = None if ctx.tower is None else getattr(ctx.tower, field)
    if value is None:
        raise ConfigError(
            f"merger '{merger}' needs the vision tower's {field} (MergeContext.tower), which the pre-LLM stage fills "
            "for a LLaVA-style model with a CLIP or DINOv2 tower; called without it"
        )
    return value


class VTCCLSMerger(BaseMerger):
    """Keeps the ``round(keep_ratio * N)`` patches of each image with the largest [CLS] attention, in raster order.

    A patch's score is the head-mean attention of the tower's class token to it, summed over the tower layers
    ``start_layer`` to the feature layer (the one whose output the projector reads; LLaVA's ``hidden_states[-2]``),
    i.e. the reference's ``attentions[start_layer:-1]``.
    """

    name = "vtc-cls"
    paper = "VTC-CLS, arXiv:2412.05819"
    stage = "pre_llm"
    tower_inputs: ClassVar[frozenset[TowerInput]] = frozenset({"cls_attention"})

    class Config(ComponentConfig):
        keep_ratio: float = Field(
            0.0625,
            gt=0.0,
            le=1.0,
            description="Fraction of each image's patches kept, rounded to the nearest count (0.0625: the "
            "reference's 36 of 576).",
        )
        start_layer: int | None = Field(
            None,
            ge=0,
            le=1024,
            description="0-based first tower layer of the summed [CLS] attention; None: the reference's 16 of 24 "
            "scaled to the tower depth, round(16 * L / 24), capped at the feature layer.",
        )

    config: VTCCLSMerger.Config

    def output_count(self, n: int, grid: tuple[int, int] | None = None) -> int:
        return min(n, max(1, keep_count(n, self.config.keep_ratio, "round")))

    def tower_layers(self, num_layers: int, feature_layer: int) -> list[int]:
        start = self.config.start_layer
        if start is None:
            start = min(feature_layer, round(REFERENCE_START * num_layers / REFERENCE_DEPTH))
        elif start > feature_layer:
            raise ConfigError(
                f"merger 'vtc-cls': start_layer={start} is past the feature layer {feature_layer} of this "
                f"{num_layers}-layer tower; use 0..{feature_layer}"
            )
        return list(range(start, feature_layer + 1))

    def merge(self, x: torch.Tensor, ctx: MergeContext) -> MergeResult:
        b, n, _ = x.shape
        need_tower(ctx, self.name, "cls_attention")
        assert ctx.tower is not None
        rows = torch.stack([ctx.tower.cls_rows(layer) for layer in ctx.tower.layers], 1)  # (B, L_c, n)
        if rows.shape[-1] != n:
            raise ConfigError(f"merger 'vtc-cls': {rows.shape[-1]} patches in the tower, {n} features")
        keep = topk_keep(vtc_cls_scores(rows), self.output_count(n))  # (B, K) ascending
        return MergeResult(x=gather_tokens(x, keep), source=source_from_keep(keep, n))


class VTCCLSStrategy(Strategy):
    """VTC-CLS: before the LLM keep the ``keep_ratio`` share of each image's patches that the vision tower's [CLS]
    token attends to most (head-mean, summed over the tower's deeper layers)."""

    name = "vtc-cls"
    paper = "VTC-CLS, arXiv:2412.05819"
    budget_knob = "keep_ratio"
    Config = VTCCLSMerger.Config
    merger_class = VTCCLSMerger


@hookimpl
def tokred_register_mergers(register: Callable[[type[BaseMerger]], None]) -> None:
    register(VTCCLSMerger)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(VTCCLSStrategy)
