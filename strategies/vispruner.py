"""VisPruner: keep the important patches by [CLS] attention, then diverse ones among the rest.

Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in VLMs",
arXiv:2412.01818. Implemented from the paper and issue notes on the reference code's selection, not from the
reference code.

Where tokred differs from the reference code: the [CLS] attention comes from hooks on the tower's query and key
projections (the tower keeps its SDPA kernel instead of returning attention weights); every image of a batch is
reduced on its own; the budget is a ratio of each image's patches (the reference takes a token count) and an image
keeps at least one; ranking ties go to the lower index; with several feature layers (the reference model
concatenates two) the attention is the deepest one's and the diversity uses the concatenated features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from pydantic import Field
from tokred.strategies.vtc_cls import need_tower

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
from tokred.ops.selection import gather_tokens
from tokred.ops.tower import vispruner_keep


class VisPrunerMerger(BaseMerger):
    """Keeps ``T = round(keep_ratio * N)`` patches of each image, in raster order: the ``int(T * important_ratio)``
    with the largest head-mean [CLS] attention at the feature layer, and ``T`` minus that many diverse ones.

    The diverse tokens come from the other patches, listed by descending attention, shortened in rounds: drop up to
    8 even-slot tokens most similar (cosine of the pre-projector features) to an odd-slot token, then relist the
    kept even-slot tokens (most similar first) followed by the odd-slot ones, until ``T`` minus the important count
    remain.
    """

    name = "vispruner"
    paper = "VisPruner, arXiv:2412.01818"
    stage = "pre_llm"
    tower_inputs: ClassVar[frozenset[TowerInput]] = frozenset({"cls_attention", "features"})

    class Config(ComponentConfig):
        keep_ratio: float = Field(
            0.111,
            gt=0.0,
            le=1.0,
            description="Fraction of each image's patches kept, rounded to the nearest count (0.111: 64 of 576).",
        )
        important_ratio: float = Field(
            0.5, ge=0.0, le=1.0, description="Share of the kept tokens chosen by [CLS] attention (floored)."
        )

    config: VisPrunerMerger.Config

    def output_count(self, n: int, grid: tuple[int, int] | None = None) -> int:
        return min(n, max(1, keep_count(n, self.config.keep_ratio, "round")))

    def merge(self, x: torch.Tensor, ctx: MergeContext) -> MergeResult:
        b, n, _ = x.shape
        feats = need_tower(ctx, self.name, "features")  # (B, T, C_v)
        assert ctx.tower is not None
        if feats.shape[1] != n + 1:
            raise ConfigError(f"merger 'vispruner': {feats.shape[1]} tower tokens for {n} features (expected n + 1)")
        t = self.output_count(n)
        important = keep_count(t, self.config.important_ratio, "floor")
        attention = ctx.tower.cls_rows(ctx.tower.feature_layer)  # (B, n) head-mean
        keep = vispruner_keep(attention, feats[:, 1:], t, important)  # (B, T) ascending
        return MergeResult(x=gather_tokens(x, keep), source=source_from_keep(keep, n))


class VisPrunerStrategy(Strategy):
    """VisPruner: before the LLM keep each image's patches with the most [CLS] attention plus diverse ones among the
    rest (similar pairs removed in rounds)."""

    name = "vispruner"
    paper = "VisPruner, arXiv:2412.01818"
    budget_knob = "keep_ratio"
    Config = VisPrunerMerger.Config
    merger_class = VisPrunerMerger


@hookimpl
def tokred_register_mergers(register: Callable[[type[BaseMerger]], None]) -> None:
    register(VisPrunerMerger)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(VisPrunerStrategy)
