"""DivPrune: keep the most diverse visual tokens before the LLM (greedy max-min diversity on cosine distance).

Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025,
arXiv:2503.02175. Implemented from the paper's description and the tokred dossier (algorithms.md §7), not from the
reference code (which is licensed CC BY-NC).

Where tokred differs from the reference code: every image of a batch is reduced on its own (the reference handles
batch element 0 only), the image span comes from ``input_ids`` instead of a hard-coded system-prompt length, kept
tokens are excluded from later picks explicitly (so the kept indices are unique even when tokens repeat), and an
image always keeps at least one token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field

from tokred._components import (
    BaseMerger,
    ComponentConfig,
    MergeContext,
    MergeResult,
    Strategy,
)
from tokred.hookspecs import hookimpl
from tokred.ops.counts import keep_count
from tokred.ops.diversity import max_min_diversity_keep
from tokred.ops.provenance import source_from_keep
from tokred.ops.selection import gather_tokens, protected_count


class DivPruneMerger(BaseMerger):
    """Keeps the ``round(keep_ratio * N)`` most diverse tokens of each image, in their original order.

    With distance ``1 - cos`` between token features (the LLM-input embeddings after the projector, or
    ``MergeContext.metric`` when given), the first kept token is the one whose nearest neighbour is farthest away;
    each further one is the token whose minimum distance to the kept set is largest (greedy max-min diversity).
    Protected tokens (``MergeContext.protected``) are kept and never candidates.
    """

    name = "divprune"
    paper = "DivPrune, arXiv:2503.02175"
    stage = "pre_llm"

    class Config(ComponentConfig):
        keep_ratio: float = Field(
            0.098, gt=0.0, le=1.0, description="Fraction of each image's tokens kept, rounded to the nearest count."
        )

    config: DivPruneMerger.Config

    def output_count(self, n: int, grid: tuple[int, int] | None = None) -> int:
        return min(n, max(1, keep_count(n, self.config.keep_ratio, "round")))

    def merge(self, x: torch.Tensor, ctx: MergeContext) -> MergeResult:
        b, n, _ = x.shape
        metric = x if ctx.metric is None else ctx.metric  # (B, N, C')
        p = protected_count(ctx.protected, b, n)
        keep = max_min_diversity_keep(metric, max(0, self.output_count(n) - p), protected=ctx.protected)  # (B, K)
        return MergeResult(x=gather_tokens(x, keep), source=source_from_keep(keep, n))


class DivPruneStrategy(Strategy):
    """DivPrune: before the LLM keep the ``keep_ratio`` share of each image's tokens that are most diverse
    (greedy max-min selection on cosine distance of the projected features)."""

    name = "divprune"
    paper = "DivPrune, arXiv:2503.02175"
    budget_knob = "keep_ratio"
    Config = DivPruneMerger.Config
    merger_class = DivPruneMerger


@hookimpl
def tokred_register_mergers(register: Callable[[type[BaseMerger]], None]) -> None:
    register(DivPruneMerger)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(DivPruneStrategy)
