"""ToMe's per-layer merge schedule with inflection.

Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023, arXiv:2210.09461. Layer ``i`` merges ``r_i`` tokens,
with ``r_i`` going linearly across the ``L`` layers from ``lo = floor(r (1 - inflect))`` to ``hi = 2 r - lo``, each
truncated to an integer: ``r_i = floor(lo + (hi - lo) i / (L - 1))``. Truncating the first value before deriving the
last is the reference schedule's rule (it keeps the mean near ``r`` for a fractional ``inflect``); the arithmetic
is exact (the inflect is read as a decimal). ``inflect = -1`` is the paper's decreasing schedule, 0 a constant ``r``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pydantic import Field

from tokred._components import BaseScheduler, ComponentConfig
from tokred.hookspecs import hookimpl
from tokred.ops.counts import exact_ratio


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
        """The per-layer ``r_i`` before clipping, for a stack of ``num_layers`` merging layers."""
        r = self.config.r
        lo = math.floor(r * (1 - exact_ratio(self.config.inflect)))
        hi = 2 * r - lo
        if num_layers == 1:
            return [r]
        return [math.floor(lo + (hi - lo) * exact_ratio(i) / (num_layers - 1)) for i in range(num_layers)]

    def tower_counts(self, num_layers: int, num_tokens: int) -> list[int]:
        """Tokens entering each of ``num_layers`` merging layers, then the stack's output (``num_layers + 1``).

        Layer ``i`` merges ``r_i`` of its ``c_i`` tokens: ``c_{i+1} = c_i - min(r_i, (c_i - protected) // 2)``.
        """
        counts = [num_tokens]
        for r_i in self.reductions(num_layers):
            c = counts[-1]
            counts.append(c - min(r_i, max(0, c - self.config.protected) // 2))
        return counts

    def _budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        return self.tower_counts(num_layers, num_tokens)[:-1]


@hookimpl
def tokred_register_schedulers(register: Callable[[type[BaseScheduler]], None]) -> None:
    register(TomeScheduler)
