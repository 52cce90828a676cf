"""Piecewise-linear schedule of AIM's in-LLM pruning.

Zhong et al., "AIM: Adaptive Inference of Multi-Modal LLMs via Token Merging and Pruning", ICCV 2025,
arXiv:2412.03248 (§3.3). With 1-indexed layers ``l``::

    r(l) = 1                        for l <= l1
    r(l) = (l2 - l) / (l2 - l1)     for l1 < l < l2
    r(l) = 0                        for l >= l2

and layer ``l`` processes ``floor(r(l) * N)`` visual tokens. Defaults (14, 22) for 28 layers (Qwen2-7B) and
(13, 21) for 32 (Vicuna-7B); other depths scale the 28-layer default.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from tokred._components import BaseScheduler, ComponentConfig
from tokred.errors import ConfigError
from tokred.hookspecs import hookimpl

PAPER_DEFAULTS = {28: (14, 22), 32: (13, 21)}


def default_l1_l2(num_layers: int) -> tuple[int, int]:
    """AIM's (l1, l2) for a depth: the paper's values for 28 and 32 layers, else the 28-layer ones scaled."""
    if num_layers in PAPER_DEFAULTS:
        return PAPER_DEFAULTS[num_layers]
    l1 = max(1, round(14 * num_layers / 28))
    l2 = max(l1 + 1, round(22 * num_layers / 28))
    return l1, l2


class LinearScheduler(BaseScheduler):
    """AIM's schedule: all visual tokens up to layer l1, a linear decline, none from layer l2 (1-indexed).

    Budgets are exact rationals, ``floor((l2 - l) * N / (l2 - l1))``. ``reference_code_offset`` reproduces the
    reference implementation, where the selection computed at a layer takes effect one layer later.
    """

    name = "linear"
    paper = "AIM, arXiv:2412.03248"

    class Config(ComponentConfig):
        l1: int | None = Field(
            None, ge=1, description="Last 1-indexed layer that keeps every visual token; None = AIM default for depth."
        )
        l2: int | None = Field(
            None, ge=2, description="First 1-indexed layer that keeps no visual token; None = AIM default for depth."
        )
        reference_code_offset: bool = Field(
            False, description="Apply every budget one layer later, as AIM's reference code does (dossier §1.3)."
        )

    config: Config

    def resolved(self, num_layers: int) -> tuple[int, int]:
        """The (l1, l2) used for a stack of ``num_layers`` layers."""
        d1, d2 = default_l1_l2(num_layers)
        l1 = self.config.l1 if self.config.l1 is not None else d1
        l2 = self.config.l2 if self.config.l2 is not None else max(d2, l1 + 1)
        if l2 <= l1:
            raise ConfigError(f"scheduler 'linear': need l1 < l2, got l1={l1}, l2={l2}")
        return l1, l2

    def _budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        l1, l2 = self.resolved(num_layers)
        out = []
        for layer in range(1, num_layers + 1):  # 1-indexed as in the paper
            if layer <= l1:
                out.append(num_tokens)
            elif layer >= l2:
                out.append(0)
            else:
                out.append((l2 - layer) * num_tokens // (l2 - l1))
        if self.config.reference_code_offset:
            out = [num_tokens] + out[:-1]
        return out


@hookimpl
def tokred_register_schedulers(register: Callable[[type[BaseScheduler]], None]) -> None:
    register(LinearScheduler)
