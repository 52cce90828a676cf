"""Pyramid (staged) schedule of PyramidDrop.

Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy
Reduction", CVPR 2025, arXiv:2410.17247. The LLM is split into stages; stage ``s`` keeps ``floor(N * ratio**s)``
visual tokens, or ``floor(N * ratios[s - 1])`` when a per-stage list is given (PyramidDrop's
``image_token_ratio_list``; the ``pyramiddrop`` strategy drives this schedule). Defaults: boundaries after layers 8, 16,
24 of 32 (scaled to other depths), ratio 0.5.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field, model_validator

from tokred._components import BaseScheduler, ComponentConfig
from tokred.errors import ConfigError
from tokred.hookspecs import hookimpl
from tokred.ops.counts import keep_count


class PyramidScheduler(BaseScheduler):
    """Stage-wise geometric schedule: each stage boundary multiplies the visual budget by ``ratio``."""

    name = "pyramid"
    paper = "PyramidDrop, arXiv:2410.17247"

    class Config(ComponentConfig):
        boundaries: tuple[int, ...] | None = Field(
            None, description="1-indexed layer counts after which a stage ends; None = quarters of the depth."
        )
        ratio: float = Field(
            0.5,
            gt=0.0,
            lt=1.0,
            description="Factor applied to the budget at each boundary (λ); stage s keeps floor(N * λ**s), exact.",
        )
        ratios: tuple[float, ...] | None = Field(
            None,
            description="Per-stage share of the N visual tokens kept (one per boundary, non-increasing); stage s keeps "
            "floor(N * ratios[s-1]), exact. None = powers of ratio.",
        )

        @model_validator(mode="after")
        def _check_ratios(self) -> PyramidScheduler.Config:
            r = self.ratios
            if r is not None and not all(0.0 <= x <= 1.0 for x in r):
                raise ValueError(f"ratios must lie in [0, 1], got {list(r)}")
            if r is not None and any(b > a for a, b in zip(r, r[1:])):
                raise ValueError(f"ratios must be non-increasing, got {list(r)}")
            if r is not None and self.boundaries is not None and len(r) != len(self.boundaries):
                raise ValueError(f"{len(r)} ratios for {len(self.boundaries)} boundaries; give one per boundary")
            return self

    config: Config

    def resolved(self, num_layers: int) -> tuple[int, ...]:
        """Stage boundaries used for ``num_layers`` layers ((8, 16, 24) for 32 layers)."""
        if self.config.boundaries is None:
            return tuple(sorted({max(1, round(num_layers * s / 4)) for s in (1, 2, 3)}))
        bounds = tuple(self.config.boundaries)
        if list(bounds) != sorted(set(bounds)) or bounds[0] < 1 or bounds[-1] >= num_layers:
            raise ConfigError(
                f"scheduler 'pyramid': boundaries must be increasing in 1..{num_layers - 1}, got {list(bounds)}"
            )
        return bounds

    def _budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        bounds = self.resolved(num_layers)
        stages = [sum(b <= i for b in bounds) for i in range(num_layers)]
        ratios = self.config.ratios
        if ratios is None:
            return [keep_count(num_tokens, self.config.ratio, "floor", power=s) for s in stages]
        if len(ratios) != len(bounds):
            raise ConfigError(
                f"scheduler 'pyramid': {len(ratios)} ratios for the {len(bounds)} stage boundaries {list(bounds)} of a "
                f"{num_layers}-layer stack; give boundaries explicitly, one per ratio"
            )
        return [num_tokens if s == 0 else keep_count(num_tokens, ratios[s - 1], "floor") for s in stages]


@hookimpl
def tokred_register_schedulers(register: Callable[[type[BaseScheduler]], None]) -> None:
    register(PyramidScheduler)
