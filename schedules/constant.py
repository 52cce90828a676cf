"""Constant schedule: every layer processes the same number of reducible tokens."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from tokred._components import BaseScheduler, ComponentConfig
from tokred.hookspecs import hookimpl
from tokred.ops.counts import ROUNDING_HELP, Rounding, keep_count


class ConstantScheduler(BaseScheduler):
    """Same budget at every layer: ``keep_count(N, keep_ratio, rounding)`` reducible tokens (floor by default).

    With the default ``keep_ratio=1`` nothing is reduced in the stack; this is the schedule of strategies that
    reduce only before the LLM. Inside the LLM a value below 1 is refused by the pipeline because layer 0 is never
    pruned (use ``one-shot`` with ``layer=1`` instead).
    """

    name = "constant"

    class Config(ComponentConfig):
        keep_ratio: float = Field(
            1.0, gt=0.0, le=1.0, description="Fraction of reducible tokens every layer keeps (exact decimal)."
        )
        rounding: Rounding = Field("floor", description=f"How keep_ratio * N becomes a count: {ROUNDING_HELP}.")

    config: Config

    def _budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        return [keep_count(num_tokens, self.config.keep_ratio, self.config.rounding)] * num_layers


@hookimpl
def tokred_register_schedulers(register: Callable[[type[BaseScheduler]], None]) -> None:
    register(ConstantScheduler)
