"""VisionZip: keep the dominant tokens the [CLS] token attends to, merge the rest into a few contextual tokens.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025,
arXiv:2412.04467. Implemented from the paper and the tokred dossier (algorithms.md §5), not from the reference code.

Where tokred differs from the reference code: the [CLS] attention and the keys come from hooks on the tower's query
and key projections (the tower keeps its SDPA kernel; the reference patches CLIP's attention to eager with
``output_attentions``); every image of a batch is reduced on its own; ``contextual`` is capped at the remaining
tokens and 0 is allowed (the reference divides by it); with several feature layers (the reference model
concatenates two) the attention and keys are those of the deepest one and the merged features are the concatenated
ones. ``contextual_merge="reference"`` keeps the reference's target + mean of its members; ``"mean"`` averages the
whole group, target included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

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
from tokred.ops.tower import visionzip_contextual, visionzip_groups


def visionzip_counts(n: int, dominant: int, contextual: int) -> tuple[int, int]:
    """(dominant patches, contextual tokens) for ``n`` patches: ``dominant`` counts the class-token slot."""
    patches = min(n, dominant - 1)
    return patches, min(contextual, n - patches)


class VisionZipMerger(BaseMerger):
    """Outputs the [CLS] slot, the ``dominant - 1`` patches with the most [CLS] attention (in raster order) and
    ``contextual`` tokens merged from the rest, on the tower's pre-projector features, then projected.

    At the feature layer (whose output the projector reads): dominant = top patches by the class token's attention
    summed over heads; contextual = the other patches, grouped around evenly spaced targets by the cosine of their
    keys (mean over heads); each group's merged pre-projector features go through the model's projector.
    """

    name = "visionzip"
    paper = "VisionZip, arXiv:2412.04467"
    stage = "pre_llm"
    tower_inputs: ClassVar[frozenset[TowerInput]] = frozenset({"cls_attention", "keys", "features"})

    class Config(ComponentConfig):
        dominant: int = Field(
            54, ge=1, le=16384, description="Dominant tokens, the [CLS] slot included (README: 54 of 64 tokens)."
        )
        contextual: int = Field(
            10, ge=0, le=16384, description="Contextual tokens merged from the non-dominant patches (README: 10)."
        )
        contextual_merge: Literal["reference", "mean"] = Field(
            "reference",
            description="reference: target + mean of the tokens assigned to it (the official code); mean: the "
            "mean of the whole group, target included.",
        )

    config: VisionZipMerger.Config

    def output_count(self, n: int, grid: tuple[int, int] | None = None) -> int:
        patches, contextual = visionzip_counts(n, self.config.dominant, self.config.contextual)
        return 1 + patches + contextual

    def merge(self, x: torch.Tensor, ctx: MergeContext) -> MergeResult:
        b, n, _ = x.shape
        feats = need_tower(ctx, self.name, "features")  # (B, T, C_v), class token first
        keys = need_tower(ctx, self.name, "keys")  # (B, H, T, D)
        assert ctx.tower is not None and ctx.tower.project is not None
        if feats.shape[1] != n + 1:
            raise ConfigError(f"merger 'visionzip': {feats.shape[1]} tower tokens for {n} features (expected n + 1)")
        patches, c = visionzip_counts(n, self.config.dominant, self.config.contextual)
        cls_sum = ctx.tower.cls_rows(ctx.tower.feature_layer, heads="sum")  # (B, n)
        dom, rest, group = visionzip_groups(cls_sum, keys[:, :, 1:].mean(1), patches, c)
        m = rest.shape[1]
        targets = torch.arange(0, m, max(1, m // c), device=x.device)[:c] if c else rest.new_zeros(0)
        patch_feats = feats[:, 1:].gather(1, rest[..., None].expand(-1, -1, feats.shape[-1]))  # (B, M, C_v)
        merged = visionzip_contextual(patch_feats, group, targets, c, self.config.contextual_merge)  # (B, C, C_v)
        pre = torch.cat([feats[:, :1], merged], 1)  # (B, 1 + C, C_v): the [CLS] slot and the contextual tokens
        with torch.no_grad():
            projected = ctx.tower.project(pre).to(x.dtype)  # (B, 1 + C, C)
        out = torch.cat(
            [projected[:, :1], x.gather(1, dom[..., None].expand(-1, -1, x.shape[-1])), projected[:, 1:]], 1
        )
        source = torch.full((b, n), -1, dtype=torch.long, device=x.device)
        source.scatter_(1, dom, torch.arange(1, 1 + patches, device=x.device).expand(b, -1))
        source.scatter_(1, rest, 1 + patches + group)
        if c == 0:
            source.scatter_(1, rest, -1)
        return MergeResult(x=out, source=source, class_slot=0)


class VisionZipStrategy(Strategy):
    """VisionZip: before the LLM keep each image's [CLS] slot and dominant patches (most [CLS] attention) and merge
    the other patches into a few contextual tokens (grouped by key similarity)."""

    name = "visionzip"
    paper = "VisionZip, arXiv:2412.04467"
    budget_knob = "dominant"
    Config = VisionZipMerger.Config
    merger_class = VisionZipMerger


@hookimpl
def tokred_register_mergers(register: Callable[[type[BaseMerger]], None]) -> None:
    register(VisionZipMerger)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(VisionZipStrategy)
