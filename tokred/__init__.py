"""tokred: pluggable visual-token reduction for multimodal LLMs.

Example:
    >>> import tokred
    >>> "fastv" in tokred.list_strategies()
    True
    >>> tokred.create_strategy("fastv", keep_ratio=0.25).scheduler.budgets(4, 8)
    [8, 8, 2, 2]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokred._api import create_component, create_strategy, get_strategy_class, list_components, list_strategies
from tokred._compat import check_version as _check_transformers_version
from tokred._components import (
    BaseMerger,
    BaseRouter,
    BaseScheduler,
    BaseScorer,
    ComposedStrategy,
    MergeContext,
    Merger,
    MergeResult,
    RouteContext,
    RouteDecision,
    Scheduler,
    ScoreContext,
    Scorer,
    Strategy,
    TowerContext,
    compose,
)
from tokred._config import ComponentConfig
from tokred._plugins import register_plugin
from tokred.errors import (
    ConfigError,
    RegistrationError,
    TokredError,
    UnknownNameError,
    UnsupportedModeError,
    UnsupportedModelError,
)
from tokred.hookspecs import hookimpl

if TYPE_CHECKING:  # real types for type checkers; at run time these load lazily (see __getattr__)
    from tokred.pipeline import PatchHandle, ReductionStats, patch

__version__ = "0.1.0"

_check_transformers_version()  # one warning line when transformers is outside the tested range

__all__ = [
    "BaseMerger",
    "BaseRouter",
    "BaseScheduler",
    "BaseScorer",
    "ComponentConfig",
    "ComposedStrategy",
    "ConfigError",
    "MergeContext",
    "MergeResult",
    "Merger",
    "PatchHandle",
    "ReductionStats",
    "RegistrationError",
    "RouteContext",
    "RouteDecision",
    "ScoreContext",
    "Scheduler",
    "Scorer",
    "Strategy",
    "TokredError",
    "TowerContext",
    "UnknownNameError",
    "UnsupportedModeError",
    "UnsupportedModelError",
    "__version__",
    "compose",
    "create_component",
    "create_strategy",
    "get_strategy_class",
    "hookimpl",
    "list_components",
    "list_strategies",
    "patch",
    "register_plugin",
]


def __getattr__(name: str) -> Any:
    """Lazy access to the pipeline (``patch``, ``PatchHandle``, ``ReductionStats``): import tokred stays light."""
    if name in ("patch", "PatchHandle", "ReductionStats"):
        import tokred.pipeline

        return getattr(tokred.pipeline, name)
    raise AttributeError(f"module 'tokred' has no attribute {name!r}")
