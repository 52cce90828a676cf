"""PyramidDrop: drop visual tokens stage by stage inside the LLM, each time scored by the next stage's first layer.

Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy Reduction",
CVPR 2025, arXiv:2410.17247. Implemented from the paper and the tokred dossier (algorithms.md §4), not from the
reference code.

The decoder is split into stages at ``layer_list`` (0-indexed first layers of the stages after the first, i.e. the
reference's 1-indexed "after layer l" counts). At boundary ``l``, before layer ``l`` runs, the tokens entering it are
scored with layer ``l``'s *own* input norm, query/key projections and RoPE (at the current positions): the softmax of
the last token's query over all keys, averaged over heads (grouped-query keys repeated per head), read at the image
columns; the top ``int(N * ratio_s)`` image tokens of the original ``N`` survive, in their original order, and layers
``>= l`` run on them. By default positions are then renumbered ``0..n-1`` (``positions="reindex"``), as the reference
repacks the sequence after every drop; decode steps continue from the renumbered positions.

Where tokred differs from the reference code: tokens are really dropped in every layer of a stage and their KV cache
holds only the kept tokens (the reference also does this, but only for batch 1 with right padding); batches of any
size work, left-padded (each sample keeps the same count; padding keeps its own positions and is never dropped); the
image span comes from ``input_ids``; the scoring pass runs the layer's own attention module up to its attention
function (so q/k norms of families such as Qwen3 or Gemma3 are applied as the layer applies them) and stops there, so
neither the attention nor the output projection of that pass is computed. ``positions="original"`` is offered for
comparison with the rest of tokred's in-LLM strategies, which keep original positions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, model_validator
from tokred.schedules.pyramid import PyramidScheduler
from tokred.strategies.fastv import LastTokenAttentionScorer

from tokred._components import BaseMerger, BaseScheduler, BaseScorer, ComponentConfig, Strategy
from tokred.hookspecs import hookimpl


class PyramidDropScorer(LastTokenAttentionScorer):
    """PyramidDrop's lightweight attention: the last token's softmax row over all keys, head-mean, computed with the
    pruning layer's own input norm, q/k projections and RoPE (before that layer runs on the reduced set)."""

    name = "pyramiddrop"
    paper = "PyramidDrop, arXiv:2410.17247"
    query_rows = "last"
    scores_own_layer = True


class PyramidDropStrategy(Strategy):
    """PyramidDrop: at each stage boundary keep the image tokens the last token attends to most, scored by the
    boundary layer's own projections; stage s keeps ``int(N * image_token_ratio_list[s-1])`` of the N image tokens."""

    name = "pyramiddrop"
    paper = "PyramidDrop, arXiv:2410.17247"
    budget_knob = "ratio"

    class Config(ComponentConfig):
        layer_list: tuple[int, ...] | None = Field(
            None,
            description="0-indexed first layers of stages 2.. (they and later layers see the reduced set); None = "
            "[8, 16, 24] scaled to the depth (round(L*s/4), s = 1, 2, 3).",
        )
        image_token_ratio_list: tuple[float, ...] | None = Field(
            None,
            description="Share of the N image tokens each stage after a boundary keeps, floor(N * r), exact, "
            "non-increasing, one per boundary; None = [λ, λ², λ³] from ratio ([0.5, 0.25, 0.125] by default).",
        )
        ratio: float = Field(
            0.5,
            gt=0.0,
            lt=1.0,
            description="λ, the budget knob: stage s keeps floor(N * λ**s) when image_token_ratio_list is None.",
        )
        positions: Literal["original", "reindex"] = Field(
            "reindex",
            description="Positions after a drop: reindex = 0..n-1 over the kept tokens (the reference), original = "
            "kept tokens keep theirs.",
        )

        @model_validator(mode="after")
        def _check_lists(self) -> PyramidDropStrategy.Config:
            lay, rat = self.layer_list, self.image_token_ratio_list
            if lay is not None and (not lay or min(lay) < 1):
                raise ValueError(f"layer_list needs layers >= 1 (layer 0 is never pruned), got {list(lay)}")
            if rat is not None and not all(0.0 <= r <= 1.0 for r in rat):
                raise ValueError(f"image_token_ratio_list entries must lie in [0, 1], got {list(rat)}")
            if lay is not None and list(lay) != sorted(set(lay)):
                raise ValueError(f"layer_list must be strictly increasing, got {list(lay)}")
            if rat is not None and lay is not None and len(rat) != len(lay):
                raise ValueError(f"{len(rat)} ratios for {len(lay)} layers; give one ratio per layer_list entry")
            if rat is not None and any(b > a for a, b in zip(rat, rat[1:])):
                raise ValueError(f"image_token_ratio_list must be non-increasing, got {list(rat)}")
            return self

    config: Config

    def build(self) -> tuple[BaseMerger | None, BaseScorer | None, BaseScheduler | None]:
        c = self.config
        schedule = PyramidScheduler(boundaries=c.layer_list, ratio=c.ratio, ratios=c.image_token_ratio_list)
        return None, PyramidDropScorer(), schedule

    def with_budget(self, value: float) -> Strategy:
        """A copy with λ set to ``value`` and the stage ratios derived from it (``[λ, λ², ...]``), so that a budget
        search moves every stage."""
        options: dict[str, Any] = self.config.model_dump()
        options.update(ratio=value, image_token_ratio_list=None)
        return type(self)(**options)


@hookimpl
def tokred_register_scorers(register: Callable[[type[BaseScorer]], None]) -> None:
    register(PyramidDropScorer)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(PyramidDropStrategy)
