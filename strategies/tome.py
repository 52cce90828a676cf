"""ToMe: token merging inside the vision tower.

Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023, arXiv:2210.09461. Implemented from the paper and
the tokred dossier (algorithms.md §3), not from the reference code (which is CC-BY-NC).

In every vision-tower layer, between attention and MLP, ``r`` tokens are merged by bipartite soft matching on the
attention keys (averaged over heads), with size-weighted averaging and proportional attention (``log size`` added
to the attention logits). The class token, when the tower has one, is protected. The number of image placeholder
tokens in the prompt shrinks to match what the tower outputs.

Like the reference, each layer's output order is ``[class token, unmerged A (even) tokens by index, B (odd) tokens by
index]`` when a class token is protected, and ``[unmerged A by score, B by index]`` without one; the order decides
the next layer's alternating split (``order="original"`` keeps index order instead). The schedule ``r_i`` is spread
over all ``L`` tower layers and every layer the features pass through merges: ``vision_feature_layer=-1`` -> all
``L`` layers, ``-2`` (LLaVA) -> layers ``0..L-2`` (the last layer's output is not used), ``f >= 0`` -> ``f`` layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field
from tokred.schedules.tome import TomeScheduler

from tokred._components import (
    BaseMerger,
    ComponentConfig,
    MergeContext,
    MergeResult,
    Strategy,
)
from tokred.hookspecs import hookimpl
from tokred.ops.matching import MergeOrder


class TomeMerger(BaseMerger):
    """ToMe's merge: bipartite soft matching on keys, size-weighted mean, sizes carried across layers."""

    name = "tome"
    paper = "ToMe, arXiv:2210.09461"
    stage = "vision"

    class Config(ComponentConfig):
        r: int = Field(8, ge=0, le=4096, description="Tokens merged per vision-tower layer (average if inflected).")
        inflect: float = Field(0.0, ge=-1.0, le=1.0, description="Slope of r across layers: -1 decreasing, 0 flat.")
        prop_attn: bool = Field(True, description="Add log(size) to attention logits (proportional attention).")
        order: Literal["reference", "original"] = Field(
            "reference",
            description="Output order of each layer: the reference's ([class, unmerged even by index, odd by index] "
            "with a class token, unmerged by score without), or original index order.",
        )

    config: TomeMerger.Config

    def layer_budgets(self, num_layers: int, num_tokens: int) -> list[int] | None:
        return self.tower_counts(num_layers, num_tokens)[:-1]

    def tower_counts(self, num_layers: int, num_tokens: int) -> list[int]:
        """Tokens entering each of ``num_layers`` tower layers, then after the last one's merge (``L + 1``)."""
        return TomeScheduler(r=self.config.r, inflect=self.config.inflect).tower_counts(num_layers, num_tokens)

    def merge(self, x: torch.Tensor, ctx: MergeContext) -> MergeResult:
        from tokred.ops import bipartite_soft_matching

        n = x.shape[1]
        r = n - ctx.target if ctx.target is not None else self.config.r
        metric = ctx.metric if ctx.metric is not None else x
        if self.config.order == "original":
            order: MergeOrder = "original"
        else:
            order = "split" if ctx.protected is not None else "score"
        plan = bipartite_soft_matching(metric, r, protected=ctx.protected, order=order)
        merged, size = plan.merge_weighted(x, ctx.size)
        return MergeResult(x=merged, source=plan.source, size=size)


class TomeStrategy(Strategy):
    """ToMe in the vision tower: merge ``r`` tokens per layer with size-weighted averaging."""

    name = "tome"
    paper = "ToMe, arXiv:2210.09461"
    budget_knob = "r"
    budget_direction = -1
    Config = TomeMerger.Config
    merger_class = TomeMerger


@hookimpl
def tokred_register_mergers(register: Callable[[type[BaseMerger]], None]) -> None:
    register(TomeMerger)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(TomeStrategy)
