"""Model adapters: the only code that knows where a transformers model family keeps what tokred needs.

Adapters register through the ``tokred_register_adapters`` hook; ``tokred_model_adapter`` picks one per model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tokred.hookspecs import hookimpl


@hookimpl(trylast=True)
def tokred_model_adapter(model: Any, adapters: Sequence[type[Any]]) -> type[Any] | None:
    """Default choice: the first registered adapter whose ``matches(model)`` is true."""
    for adapter in adapters:
        if adapter.matches(model):
            return adapter
    return None


@hookimpl
def tokred_register_adapters(register: Callable[[type[Any]], None]) -> None:
    """Built-in adapters are registered here as they are added."""
