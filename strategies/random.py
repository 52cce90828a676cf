"""Random selection: the seeded chance baseline, before the LLM or at a decoder layer.

A method that does not beat random selection at the same budget has not shown that its signal matters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from tokred.schedules.one_shot import OneShotScheduler

from tokred._components import (
    BaseMerger,
    BaseScheduler,
    BaseScorer,
    ComponentConfig,
    MergeContext,
    MergeResult,
    ScoreContext,
    Strategy,
)
from tokred.hookspecs import hookimpl
from tokred.ops.counts import ROUNDING_HELP, Rounding, keep_count


class RandomScorer(BaseScorer):
    """Uniform random scores from an explicit seed (independent of the global RNG).

    The j-th visual token of every sample gets the j-th number of one seeded sequence, so scores do not depend on
    padding, text length or the other samples of a batch (a padded batch equals its single runs).
    """

    name = "random"

    class Config(ComponentConfig):
        seed: int = Field(0, ge=0, description="Seed of the generator; the same seed gives the same scores.")

    config: RandomScorer.Config

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        from tokred.ops import random_scores

        seed = self.config.seed if ctx.seed is None else ctx.seed
        visual = ctx.visual_mask.bool()  # (B, N)
        longest = max(1, int(visual.sum(-1).max()))
        draws = random_scores((1, longest), seed=seed, device=visual.device)[0]  # (V_max,)
        rank = (visual.cumsum(-1) - 1).clamp_min(0)  # (B, N) index among the sample's visual tokens
        return draws[rank] * visual  # (B, N), 0 on text


class RandomMerger(BaseMerger):
    """Keeps a seeded random ``keep_ratio`` share of each image's tokens (at least one), in their original order.

    Every image of a batch keeps the same positions (one seeded draw), so results do not depend on batching.
    """

    name = "random"
    stage = "pre_llm"

    class Config(ComponentConfig):
        keep_ratio: float = Field(0.5, gt=0.0, le=1.0, description="Fraction of each image's tokens kept (exact).")
        seed: int = Field(0, ge=0, description="Seed of the generator; the same seed keeps the same tokens.")
        rounding: Rounding = Field("floor", description=f"How keep_ratio * N becomes a count: {ROUNDING_HELP}.")

    config: RandomMerger.Config

    def output_count(self, n: int, grid: tuple[int, int] | None = None) -> int:
        return max(1, keep_count(n, self.config.keep_ratio, self.config.rounding))

    def merge(self, x: torch.Tensor, ctx: MergeContext) -> MergeResult:
        from tokred.ops import gather_tokens, random_keep, source_from_keep

        b, n, _ = x.shape
        keep = random_keep(n, self.output_count(n), batch=1, seed=self.config.seed).expand(b, -1)  # (B, K)
        keep = keep.to(x.device)
        return MergeResult(x=gather_tokens(x, keep), source=source_from_keep(keep, n))


class RandomStrategy(Strategy):
    """Random baseline: keep a seeded random ``keep_ratio`` of visual tokens before the LLM (``layer=0``) or from
    decoder layer ``layer`` on."""

    name = "random"
    budget_knob = "keep_ratio"

    class Config(ComponentConfig):
        keep_ratio: float = Field(0.5, gt=0.0, le=1.0, description="Fraction of visual tokens kept (exact decimal).")
        layer: int = Field(0, ge=0, description="0: select before the LLM; K >= 1: from decoder layer K on.")
        seed: int = Field(0, ge=0, description="Seed of the generator.")
        rounding: Rounding = Field("floor", description=f"How keep_ratio * N becomes a count: {ROUNDING_HELP}.")

    config: RandomStrategy.Config

    def build(self) -> tuple[BaseMerger | None, BaseScorer | None, BaseScheduler | None]:
        c = self.config
        if c.layer == 0:
            return RandomMerger(keep_ratio=c.keep_ratio, seed=c.seed, rounding=c.rounding), None, None
        schedule = OneShotScheduler(layer=c.layer, keep_ratio=c.keep_ratio, rounding=c.rounding)
        return None, RandomScorer(seed=c.seed), schedule


@hookimpl
def tokred_register_mergers(register: Callable[[type[BaseMerger]], None]) -> None:
    register(RandomMerger)


@hookimpl
def tokred_register_scorers(register: Callable[[type[BaseScorer]], None]) -> None:
    register(RandomScorer)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(RandomStrategy)
