"""FitPrune's offline fit: per-layer deletion counts for a prefill-FLOPs budget, by a binary search on ``alpha``.

Every calibration sample runs one prefill through the pipeline with a self-sizing schedule
(`tokred.BaseScheduler.adaptive`): at every layer boundary ``l >= 1`` the calibration scorer reads layer ``l - 1``'s
queries and keys (the SDPA-safe capture), computes the head-max cross and self scores of the visual tokens still
present, and deletes the intersection of the lowest ones allowed by the ``(1 - alpha)`` rule against the unpruned
model's sums (recorded by a first, unpruned pass). The FLOPs check is layer-synchronous over the samples, as in the
paper: pruning stops at the first boundary where the mean prefill FLOPs projected with no further deletion reach the
budget, so the deletions of each sample before that boundary are exactly those of its full-depth pass. A budget that
is reached at some ``alpha`` is reached at any larger one; the search keeps the smallest (tolerance 0.01).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

import tokred
from tokred._components import BaseScheduler, BaseScorer, ScoreContext
from tokred.errors import ConfigError
from tokred.flops import prefill_flops
from tokred.ops.fitprune import cross_self_scores, fit_deletions, intersect_lowest


class _Adaptive(BaseScheduler):
    """Every layer may prune; the calibration scorer sizes each one."""

    name = "fitprune-calibration"
    adaptive: ClassVar[bool] = True

    def _budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        return [num_tokens] * num_layers


class _CalibrationScorer(BaseScorer):
    """Records the unpruned sums (``alpha is None``) or scores the tokens FitPrune deletes ``-inf``."""

    name = "fitprune-calibration"
    query_rows = "all"

    def __init__(self, alpha: float | None, full: dict[int, tuple[float, float]]) -> None:
        super().__init__()
        self.alpha, self.full = alpha, full

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        assert ctx.query is not None and ctx.key is not None and ctx.scaling is not None and ctx.layer is not None
        visual = ctx.visual_mask[0]  # (N,) one sample
        cross, self_ = cross_self_scores(
            ctx.query, ctx.key, scaling=ctx.scaling, visual=ctx.visual_mask, real=ctx.attention_mask
        )
        c, s = cross[0, visual], self_[0, visual]  # (V,)
        scores = torch.zeros(ctx.visual_mask.shape, dtype=torch.float32, device=c.device)  # (1, N)
        if self.alpha is None:
            self.full[ctx.layer] = (float(c.sum()), float(s.sum()))
            return scores
        full_c, full_s = self.full[ctx.layer]
        k_c = fit_deletions(c, full_sum=full_c, alpha=self.alpha)
        k_s = fit_deletions(s, full_sum=full_s, alpha=self.alpha)
        gone = torch.nonzero(visual)[:, 0][intersect_lowest(c, s, k_c, k_s)]  # sequence positions
        scores[0, gone] = float("-inf")
        return scores


@torch.no_grad()
def _visual_counts(model: Any, inputs: dict[str, torch.Tensor], scorer: _CalibrationScorer) -> list[int]:
    """Visual tokens each decoder layer processed in one prefill under the calibration scorer."""
    with tokred.patch(model, tokred.compose(scorer=scorer, scheduler=_Adaptive(), label="fitprune-fit")) as h:
        model(**inputs, use_cache=False)
        return list(h.stats.visual_tokens_per_layer)


def _flops(cfg: Any, text: int, counts: list[int], convention: str) -> float:
    return prefill_flops(cfg, [text + c for c in counts], convention)  # type: ignore[arg-type]


def _stop_layer(cfg: Any, texts: list[int], runs: list[list[int]], target: float, convention: str) -> int | None:
    """First boundary ``l`` at which the mean projected FLOPs (deletions before ``l`` only) reach ``target`` (a share of
    the mean unpruned FLOPs); ``None`` if even every deletion does not."""
    layers = len(runs[0])
    base = sum(_flops(cfg, t, [r[0]] * layers, convention) for t, r in zip(texts, runs))
    for stop in range(1, layers + 1):
        used = sum(_flops(cfg, t, r[:stop] + [r[stop - 1]] * (layers - stop), convention) for t, r in zip(texts, runs))
        if used <= target * base:
            return stop
    return None


def _deletions(runs: list[list[int]], stop: int) -> list[float]:
    """Mean visual tokens deleted on entering each layer, before the stop boundary."""
    layers = len(runs[0])
    return [0.0] + [sum(r[i - 1] - r[i] for r in runs) / len(runs) if i < stop else 0.0 for i in range(1, layers)]


def fit_recipe(
    model: Any,
    inputs: list[dict[str, torch.Tensor]],
    budget: float,
    *,
    convention: str = "llm-viewer",
    tol: float = 0.01,
) -> dict[str, Any]:
    """The recipe body for ``budget`` (relative prefill FLOPs): mean deletions per layer and what they achieve.

    Raises:
        ConfigError: If the budget is below what deleting every visual token at layer 1 reaches.
    """
    from tokred.strategies.fitprune import FitPruneScheduler

    cfg = getattr(model.config, "text_config", None) or model.config
    full: list[dict[int, tuple[float, float]]] = [{} for _ in inputs]
    texts = []
    for batch, sums in zip(inputs, full):
        counts = _visual_counts(model, batch, _CalibrationScorer(None, sums))
        texts.append(int(batch["attention_mask"].sum()) - counts[0])

    def run(alpha: float) -> tuple[int | None, list[list[int]]]:
        runs = [_visual_counts(model, b, _CalibrationScorer(alpha, s)) for b, s in zip(inputs, full)]
        return _stop_layer(cfg, texts, runs, budget, convention), runs

    stop, runs = run(1.0)
    if stop is None:
        raise ConfigError(f"fitprune cannot reach flops={budget:g}: even without visual tokens the prefill costs more")
    lo, hi, best, steps = 0.0, 1.0, (stop, runs), 1
    while hi - lo > tol + 1e-9:
        mid = (lo + hi) / 2
        found, mid_runs = run(mid)
        steps += 1
        if found is not None:
            hi, best = mid, (found, mid_runs)
        else:
            lo = mid
    deletions = _deletions(best[1], best[0])
    n_visual = sum(r[0] for r in best[1]) / len(best[1])
    sched = FitPruneScheduler(deletions=tuple(d / n_visual for d in deletions))
    base = sum(_flops(cfg, t, [r[0]] * len(r), convention) for t, r in zip(texts, best[1]))
    got = sum(_flops(cfg, t, sched.budgets(len(r), r[0]), convention) for t, r in zip(texts, best[1]))
    return {
        "per_layer": deletions,
        "n_visual": n_visual,
        "convention": convention,
        "achieved": {"flops": got / base},
        "details": {"alpha": hi, "stop_layer": best[0], "search_steps": steps, "tolerance": tol},
    }
