"""FitPrune: a per-layer pruning recipe fitted offline to a FLOPs budget, applied with cross x self attention scores.

Ye et al., "Fit and Prune: Fast and Training-free Visual Token Pruning for Multi-modal Large Language Models",
arXiv:2409.10197 (official repo ywh187/FitPrune). Implemented from the paper and the tokred dossier (field-2026-12.md,
seed methods), not from the reference code.

Offline (`tokred calibrate fitprune`, `tokred.calibrate_fitprune`): per layer, attention is max-pooled over heads;
a visual key's *cross* score sums the attention of the text queries after the image, its *self* score sums the
visual queries' attention divided by the number of visual tokens. At every layer the lowest-scoring visual tokens
are deleted while the remaining sum stays >= ``(1 - alpha)`` of the unpruned model's, separately for cross and self,
the deleted set being the intersection; ``alpha`` is binary-searched (tolerance 0.01) for the smallest value whose
pruning reaches the FLOPs budget, and the recipe is the mean number of deletions per layer. At inference layer ``l``
deletes its recipe count of the visual tokens with the lowest ``cross x self`` score.

Where tokred differs from the reference code: the lowest-scoring tokens are deleted (a public re-implementation keeps
them); tokens deleted on the evidence of layer ``l``'s attention leave before layer ``l + 1`` (tokred prunes between
layers, so layer ``l``'s MLP still runs on them) and the pruned layers' KV caches hold only the kept tokens; FLOPs are
tokred's whole-prompt prefill FLOPs (text included, `llm-viewer` convention by default) instead of a hard-coded
7B visual-token count; attention comes from captured queries and keys (SDPA or eager, no ``output_attentions``);
batches of any size work at inference (one sample at a time in calibration); the recipe keeps the per-layer means as
fractions of the visual tokens and rounds the cumulative count, so it applies to other visual counts too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field

from tokred._components import BaseMerger, BaseScheduler, BaseScorer, ComponentConfig, ScoreContext, Strategy
from tokred.errors import ConfigError
from tokred.hookspecs import hookimpl
from tokred.ops.fitprune import cross_self_scores


class FitPruneScheduler(BaseScheduler):
    """FitPrune's recipe as a schedule: layer ``l`` keeps ``N - round(N * sum_{j <= l} deletions[j])`` visual tokens."""

    name = "fitprune"
    paper = "FitPrune, arXiv:2409.10197"

    class Config(ComponentConfig):
        deletions: tuple[float, ...] = Field(
            (), description="Visual tokens deleted on entering each layer, as fractions of N (from a recipe)."
        )

    config: Config

    def _budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        d = self.config.deletions
        if not d:
            raise ConfigError("scheduler 'fitprune' has no recipe: load one (strategy 'fitprune' does at patch time)")
        if len(d) != num_layers:
            raise ConfigError(f"scheduler 'fitprune': the recipe has {len(d)} layers, the model {num_layers}")
        if d[0] != 0 or any(x < 0 for x in d):
            raise ConfigError("scheduler 'fitprune': deletions must be >= 0 and 0 at layer 0 (never pruned)")
        out, total = [], 0.0
        for x in d:
            total += x
            out.append(max(0, num_tokens - round(num_tokens * min(total, 1.0))))
        return out


class FitPruneScorer(BaseScorer):
    """FitPrune's score of a visual token: its cross attention (text after the image) times its self attention
    (visual queries, / N_v), both from head-max attention probabilities of the layer before the pruning layer."""

    name = "fitprune"
    paper = "FitPrune, arXiv:2409.10197"
    query_rows = "all"

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        if ctx.query is None or ctx.key is None or ctx.scaling is None:
            raise ConfigError("scorer 'fitprune' needs every query row and the keys of the scoring layer")
        real = ctx.attention_mask if ctx.key_mask is None else ctx.key_mask
        cross, self_ = cross_self_scores(ctx.query, ctx.key, scaling=ctx.scaling, visual=ctx.visual_mask, real=real)
        return cross * self_  # (B, N); higher = keep


class FitPruneStrategy(Strategy):
    """FitPrune: delete, layer by layer, the visual tokens with the lowest cross x self attention, as many as a recipe
    calibrated for a prefill-FLOPs budget says (``recipe=PATH``, or calibrated once per model and budget and cached).
    """

    name = "fitprune"
    paper = "FitPrune, arXiv:2409.10197"
    budget_knob = "budget"
    calibrated_budget = "flops"  # `tokred compare --match flops=` calibrates at the target (tokred.calibration)

    class Config(ComponentConfig):
        budget: float = Field(0.5, gt=0.0, le=1.0, description="Prefill FLOPs of the recipe relative to no pruning.")
        recipe: str | None = Field(
            None, description="Recipe file from `tokred calibrate fitprune`; default: the cached one for this model."
        )
        samples: int = Field(64, ge=1, le=4096, description="Calibration samples when no recipe is cached yet.")
        convention: Literal["llm-viewer", "fastv"] = Field("llm-viewer", description="FLOPs convention of budget.")

    config: Config

    def build(self) -> tuple[BaseMerger | None, BaseScorer | None, BaseScheduler | None]:
        return None, FitPruneScorer(), FitPruneScheduler()

    def prepare(self, model: Any) -> None:
        """Load the recipe: ``recipe``, else the cached one for this model and budget, else calibrate (cached)."""
        from tokred.calibration import resolve_recipe

        c = self.config
        recipe = resolve_recipe("fitprune", model, "flops", c.budget, c.recipe, c.samples, convention=c.convention)
        self.use_recipe(recipe)

    def use_recipe(self, recipe: dict[str, Any]) -> None:
        """Apply a loaded recipe (its per-layer deletions become the schedule)."""
        n = float(recipe["n_visual"])
        self.scheduler = FitPruneScheduler(deletions=tuple(float(x) / n if n else 0.0 for x in recipe["per_layer"]))


@hookimpl
def tokred_register_scorers(register: Callable[[type[BaseScorer]], None]) -> None:
    register(FitPruneScorer)


@hookimpl
def tokred_register_schedulers(register: Callable[[type[BaseScheduler]], None]) -> None:
    register(FitPruneScheduler)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(FitPruneStrategy)
