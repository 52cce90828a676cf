"""Model adapters: the only code that knows where a transformers model family keeps what tokred needs.

Adapters register through the ``tokred_register_adapters`` hook; ``tokred_model_adapter`` picks one per model. The
built-in family adapters come first and the generic adapter ([`ModelAdapter`][tokred.adapters.ModelAdapter]) last, so
a family override wins and every other model following the generic contract still works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tokred.adapters.base import ModelAdapter
from tokred.adapters.families import AnyresAdapter, DeepStackAdapter, Gemma3Adapter, QwenVLAdapter
from tokred.hookspecs import hookimpl

__all__ = ["AnyresAdapter", "DeepStackAdapter", "Gemma3Adapter", "ModelAdapter", "QwenVLAdapter"]

#: Families the built-in adapters are tested on (named in the error for an unsupported model).
SUPPORTED_FAMILIES = (
    "LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Idefics3, SmolVLM, InternVL, Gemma3 "
    "(and any model following the generic contract: get_image_features + image_token_id placeholders + "
    "get_decoder().layers + rotary embedding)"
)


@hookimpl(trylast=True)
def tokred_model_adapter(model: Any, adapters: Sequence[type[Any]]) -> type[Any] | None:
    """Default choice: the first registered adapter whose ``matches(model)`` is true."""
    for adapter in adapters:
        if adapter.matches(model):
            return adapter
    return None


@hookimpl
def tokred_register_adapters(register: Callable[[type[Any]], None]) -> None:
    """Family adapters first, the generic one last (``tokred_model_adapter`` takes the first match)."""
    for adapter in (DeepStackAdapter, QwenVLAdapter, Gemma3Adapter, AnyresAdapter, ModelAdapter):
        register(adapter)
