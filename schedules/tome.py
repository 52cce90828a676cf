"""ToMe's per-layer merge schedule with inflection.

Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023, arXiv:2210.09461. Layer ``i`` merges ``r_i`` tokens,
with ``r_i`` going linearly from ``r (1 - inflect)`` to ``r (1 + inflect)`` across the layers (truncated to an
integer); ``inflect = -1`` is the paper's decreasing schedule, 0 a constant ``r``.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from tokred._components import BaseScheduler, ComponentConfig
from tokred.hookspecs import hookimpl


class TomeScheduler(BaseScheduler):
    """Tokens entering each layer when layer ``i`` merges ``r_i`` of them (at most half of what it has).

    Budget ``b_0 = N`` and ``b_{i+1} = b_i - min(r_i, (b_i - protected) // 2)``: bipartite matching can remove at
    most half of the unprotected tokens in one layer.
    """

    name = "tome"
    paper = "ToMe, arXiv:2210.09461"

    class Config(ComponentConfig):
        r: int = Field(8, ge=0, le=4096, description="Tokens merged per layer (the average when inflect != 0).")
        inflect: float = Field(0.0, ge=-1.0, le=1.0, description="Slope of r across layers: -1 decreasing, 0 flat.")
        protected: int = Field(0, ge=0, description="Tokens never merged (e.g. 1 for a class token).")

    config: Config

    def reductions(self, num_layers: int) -> list[int]:
        """The per-layer ``r_i`` before clipping."""
        r, inflect = self.config.r, self.config.inflect
        lo, hi = r * (1.0 - inflect), r * (1.0 + inflect)
        if num_layers == 1:
            return [int(r)]
        step = (hi - lo) / (num_layers - 1)
        return [int(lo + step * i) for i in range(num_layers)]

    def _budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        budgets = [num_tokens]
        for r_i in self.reductions(num_layers)[:-1]:
            b = budgets[-1]
            budgets.append(b - min(r_i, max(0, b - self.config.protected) // 2))
        return budgets


@hookimpl
def tokred_register_schedulers(register: Callable[[type[BaseScheduler]], None]) -> None:
    register(TomeScheduler)
