"""A tokred plugin: score visual tokens by the L2 norm of their features.

It provides a scorer (``l2norm``) and a strategy built from it (``l2norm``) that drops
visual tokens once, at a decoder layer, like FastV, but ranks them by feature norm
instead of attention, so it needs no attention rows at all.
"""

from __future__ import annotations

from collections.abc import Callable

import tokred
import torch
from pydantic import Field
from tokred.schedules.one_shot import OneShotScheduler


class L2NormScorer(tokred.BaseScorer):
    """Importance = L2 norm of each token's hidden states (or features)."""

    name = "l2norm"
    paper = "tokred tutorial (docs/plugins/tutorial.md)"
    query_rows = "none"  # hidden states only: the pipeline computes no attention rows

    class Config(tokred.ComponentConfig):
        power: float = Field(2.0, ge=1.0, le=8.0, description="Order p of the norm.")

    config: Config

    def score(self, ctx: tokred.ScoreContext) -> torch.Tensor:
        # Inside the LLM: the layer's input hidden states; before it: the features.
        x = ctx.hidden_states if ctx.hidden_states is not None else ctx.features
        if x is None:
            raise tokred.ConfigError("scorer 'l2norm' needs hidden states or features")
        p = self.config.power
        return torch.linalg.vector_norm(x.float(), ord=p, dim=-1)  # (B, N)


class L2NormStrategy(tokred.Strategy):
    """Drop visual tokens once, from layer ``layer`` on, keeping the largest norms."""

    name = "l2norm"
    paper = "tokred tutorial (docs/plugins/tutorial.md)"
    budget_knob = (
        "keep_ratio"  # the option budget matching searches (higher keeps more)
    )

    class Config(tokred.ComponentConfig):
        layer: int = Field(
            2, ge=1, description="First 0-indexed decoder layer with the reduced set."
        )
        keep_ratio: float = Field(
            0.5, ge=0.0, le=1.0, description="Fraction of visual tokens kept."
        )
        power: float = Field(2.0, ge=1.0, le=8.0, description="Order p of the norm.")

    config: Config

    def build(self) -> tuple[None, L2NormScorer, OneShotScheduler]:
        c = self.config
        # tokred's built-in "one-shot" schedule: every token up to `layer`, then a share
        scheduler = OneShotScheduler(layer=c.layer, keep_ratio=c.keep_ratio)
        return None, L2NormScorer(power=c.power), scheduler


@tokred.hookimpl
def tokred_register_scorers(
    register: Callable[[type[tokred.BaseScorer]], None],
) -> None:
    register(L2NormScorer)


@tokred.hookimpl
def tokred_register_strategies(
    register: Callable[[type[tokred.Strategy]], None],
) -> None:
    register(L2NormStrategy)
