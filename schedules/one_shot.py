"""One-shot schedule (FastV): all tokens up to layer K, a fixed fraction from layer K on.

Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024, arXiv:2403.06764.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from tokred._components import BaseScheduler, ComponentConfig
from tokred.errors import ConfigError
from tokred.hookspecs import hookimpl
from tokred.ops.counts import ROUNDING_HELP, Rounding, keep_count


class OneShotScheduler(BaseScheduler):
    """Keep every reducible token in layers ``0..K-1`` and ``keep_count(N, keep_ratio, rounding)`` from layer ``K`` on.

    FastV's "drop R % after layer K" is ``layer=K, keep_ratio=1-R`` (paper defaults K = 2, R = 50 %). The count is
    rounded to the nearest integer by default, as FastV's Hugging Face code does (``round(N * (1 - R))``).
    """

    name = "one-shot"
    paper = "FastV, arXiv:2403.06764"

    class Config(ComponentConfig):
        layer: int = Field(2, ge=1, description="0-indexed layer K from which the reduced set is used (K >= 1).")
        keep_ratio: float = Field(
            0.5, ge=0.0, le=1.0, description="Fraction of reducible tokens kept from layer K (exact decimal)."
        )
        rounding: Rounding = Field(
            "round", description=f"How keep_ratio * N becomes a count (FastV rounds): {ROUNDING_HELP}."
        )

    config: Config

    def _budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        k = self.config.layer
        if k >= num_layers:
            raise ConfigError(
                f"scheduler 'one-shot': layer={k} but the stack has {num_layers} layers; choose 1..{num_layers - 1}"
            )
        kept = keep_count(num_tokens, self.config.keep_ratio, self.config.rounding)
        return [num_tokens] * k + [kept] * (num_layers - k)


@hookimpl
def tokred_register_schedulers(register: Callable[[type[BaseScheduler]], None]) -> None:
    register(OneShotScheduler)
