"""A tokred plugin: score visual tokens by the L2 norm of their features, keep the largest.

It provides a scorer (``l2norm``) and a strategy built from it (``l2norm``) that drops visual tokens once, at a
decoder layer, like FastV, but ranks them by feature norm instead of attention, so it needs no attention rows at all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from tokred.schedules.one_shot import OneShotScheduler

import tokred


class L2NormScorer(tokred.BaseScorer):
    """Importance = L2 norm of each token's features (hidden states inside the LLM, features before it)."""

    name = "l2norm"
    paper = "tokred tutorial (docs/plugins/tutorial.md)"
    query_rows = "none"  # reads hidden states only: the pipeline captures no attention rows for it

    class Config(tokred.ComponentConfig):
        power: float = Field(2.0, ge=1.0, le=8.0, description="Order p of the norm (2 = Euclidean).")

    config: Config

    def score(self, ctx: tokred.ScoreContext) -> torch.Tensor:
        x = ctx.hidden_states if ctx.hidden_states is not None else ctx.features  # (B, N, C)
        if x is None:
            raise tokred.ConfigError("scorer 'l2norm' needs hidden states or features")
        return torch.linalg.vector_norm(x.float(), ord=self.config.power, dim=-1)  # (B, N)


class L2NormStrategy(tokred.Strategy):
    """Drop visual tokens once, from decoder layer ``layer`` on, keeping those with the largest feature norm."""

    name = "l2norm"
    paper = "tokred tutorial (docs/plugins/tutorial.md)"
    budget_knob = "keep_ratio"  # the float option that budget matching searches (higher keeps more)

    class Config(tokred.ComponentConfig):
        layer: int = Field(2, ge=1, description="First 0-indexed decoder layer that sees the reduced set.")
        keep_ratio: float = Field(0.5, ge=0.0, le=1.0, description="Fraction of visual tokens kept.")
        power: float = Field(2.0, ge=1.0, le=8.0, description="Order p of the norm.")

    config: Config

    def build(self) -> tuple[tokred.BaseMerger | None, tokred.BaseScorer | None, tokred.BaseScheduler | None]:
        c = self.config
        scheduler = OneShotScheduler(layer=c.layer, keep_ratio=c.keep_ratio)  # the built-in "one-shot" scheduler
        return None, L2NormScorer(power=c.power), scheduler


@tokred.hookimpl
def tokred_register_scorers(register: Callable[[type[tokred.BaseScorer]], None]) -> None:
    register(L2NormScorer)


@tokred.hookimpl
def tokred_register_strategies(register: Callable[[type[tokred.Strategy]], None]) -> None:
    register(L2NormStrategy)
