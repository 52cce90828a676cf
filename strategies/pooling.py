"""Plain 2-D average pooling of each image's token grid before the LLM.

The downsampling baseline that often beats published token-reduction methods at the same budget (e.g. LLaVA-OneVision
pools video frames 2x2 before its LLM). It needs the token grid, which the model adapter supplies.
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
from tokred.errors import ConfigError
from tokred.hookspecs import hookimpl


class PoolingMerger(BaseMerger):
    """Average-pools the (rows x cols) grid of each image with a square ``kernel`` and equal stride."""

    name = "pooling"
    stage = "pre_llm"

    class Config(ComponentConfig):
        kernel: int = Field(2, ge=1, le=16, description="Side of the square pooling window (and its stride).")
        ceil_mode: bool = Field(True, description="Keep partial windows at the grid edge instead of dropping them.")

    config: PoolingMerger.Config

    def output_count(self, n: int, grid: tuple[int, int] | None = None) -> int:
        from tokred.ops import pooled_grid_shape

        rows, cols = _need_grid(n, grid)
        h, w = pooled_grid_shape((rows, cols), self.config.kernel, self.config.kernel, self.config.ceil_mode)
        return h * w

    def merge(self, x: torch.Tensor, ctx: MergeContext) -> MergeResult:
        from tokred.ops import avg_pool_grid, pooled_grid_shape

        grid = _need_grid(x.shape[1], ctx.grid)
        k = self.config.kernel
        pooled, source = avg_pool_grid(x, grid, kernel=k, stride=k, ceil_mode=self.config.ceil_mode)
        return MergeResult(x=pooled, source=source, grid=pooled_grid_shape(grid, k, k, self.config.ceil_mode))


def _need_grid(n: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is not None:
        if grid[0] * grid[1] != n:
            raise ConfigError(f"merger 'pooling': grid {grid} does not hold {n} tokens")
        return grid
    side = int(round(n**0.5))
    if side * side != n:
        raise ConfigError(f"merger 'pooling' needs the token grid; {n} tokens are not a square and none was given")
    return side, side


class PoolingStrategy(Strategy):
    """2-D average pooling of each image's visual tokens before the LLM (kernel 2 keeps a quarter)."""

    name = "pooling"
    budget_knob = "kernel"
    budget_direction = -1
    Config = PoolingMerger.Config
    merger_class = PoolingMerger


@hookimpl
def tokred_register_mergers(register: Callable[[type[BaseMerger]], None]) -> None:
    register(PoolingMerger)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(PoolingStrategy)
