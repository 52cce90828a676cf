"""FastV: drop the visual tokens that the last prompt token attends to least, once, after layer K.

Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large
Vision-Language Models", ECCV 2024, arXiv:2403.06764. Implemented from the paper and the tokred dossier
(algorithms.md §2), not from the reference code.

Where tokred differs from the reference code: tokens are really dropped (hidden states, RoPE cos/sin, masks and
the KV cache of layers >= K are shorter), batches of any size work, the image span comes from ``input_ids`` instead
of hard-coded offsets, and the attention row is computed from queries and keys so any attention backend works.
Kept tokens keep their original positions, as in FastV's "inplace" mode.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from tokred.schedules.one_shot import OneShotScheduler

from tokred._components import BaseMerger, BaseScheduler, BaseScorer, ComponentConfig, ScoreContext, Strategy
from tokred.errors import ConfigError
from tokred.hookspecs import hookimpl
from tokred.ops.attention import attention_rows
from tokred.ops.counts import ROUNDING_HELP, Rounding


class LastTokenAttentionScorer(BaseScorer):
    """FastV's signal: attention probability from the last token to each token, averaged over heads."""

    name = "fastv"
    paper = "FastV, arXiv:2403.06764"
    query_rows = "last"

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        if ctx.query is None or ctx.key is None or ctx.query_index is None or ctx.scaling is None:
            raise ConfigError("scorer 'fastv' needs the last query row and the keys of the scoring layer")
        probs = attention_rows(
            ctx.query[:, :, -1:],
            ctx.key,
            scaling=ctx.scaling,
            query_index=ctx.query_index[:, -1:],
            key_mask=ctx.attention_mask if ctx.key_mask is None else ctx.key_mask,
        )  # (B, H, 1, N)
        return probs.mean(dim=1)[:, 0]  # (B, N)


class FastVStrategy(Strategy):
    """FastV: after layer K keep the ``keep_ratio`` share of visual tokens that the last token attends to most.

    The scores come from layer K-1's attention (the layer before the first reduced one), averaged over heads.
    """

    name = "fastv"
    paper = "FastV, arXiv:2403.06764"
    budget_knob = "keep_ratio"

    class Config(ComponentConfig):
        layer: int = Field(2, ge=1, description="K: first 0-indexed decoder layer that sees the reduced set (K >= 1).")
        keep_ratio: float = Field(0.5, ge=0.0, le=1.0, description="Fraction of visual tokens kept (1 - R), exact.")
        rounding: Rounding = Field(
            "round", description=f"How keep_ratio * N becomes a count (FastV's code rounds): {ROUNDING_HELP}."
        )

    config: Config

    def build(self) -> tuple[BaseMerger | None, BaseScorer | None, BaseScheduler | None]:
        c = self.config
        schedule = OneShotScheduler(layer=c.layer, keep_ratio=c.keep_ratio, rounding=c.rounding)
        return None, LastTokenAttentionScorer(), schedule


@hookimpl
def tokred_register_scorers(register: Callable[[type[BaseScorer]], None]) -> None:
    register(LastTokenAttentionScorer)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(FastVStrategy)
