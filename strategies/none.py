"""The unreduced baseline: a strategy with no components (the baseline row of every comparison)."""

from __future__ import annotations

from collections.abc import Callable

from tokred._components import Strategy
from tokred.hookspecs import hookimpl


class NoneStrategy(Strategy):
    """No reduction: every visual token reaches every layer. Patching with it must leave outputs bitwise equal."""

    name = "none"


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(NoneStrategy)
