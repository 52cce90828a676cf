"""Model adapters: the only code that knows where a transformers model family keeps what tokred needs.

Adapters register through the ``tokred_register_adapters`` hook; ``tokred_model_adapter`` picks one per model. The
generic adapter ([`ModelAdapter`][tokred.adapters.ModelAdapter]) is tried after every family adapter, so a family
override wins (whether it comes from tokred, an installed plugin or [`register_plugin`][tokred.register_plugin]) and
every other model following the generic contract still works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tokred.adapters.base import ModelAdapter
from tokred.adapters.families import AnyresAdapter, Gemma3Adapter, PaliGemmaAdapter, QwenVLAdapter
from tokred.hookspecs import hookimpl

__all__ = ["AnyresAdapter", "Gemma3Adapter", "ModelAdapter", "PaliGemmaAdapter", "QwenVLAdapter"]

#: Families the built-in adapters are tested on (named in the error for an unsupported model).
SUPPORTED_FAMILIES = (
    "LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Idefics3, SmolVLM, InternVL, Gemma3, "
    "PaliGemma "
    "(and any model following the generic contract: get_image_features + image_token_id placeholders + "
    "get_decoder().layers + rotary embedding)"
)


@hookimpl(trylast=True)
def tokred_model_adapter(model: Any, adapters: Sequence[type[Any]]) -> type[Any] | None:
    """Default choice: the first registered adapter whose ``matches(model)`` is true, the generic one tried last.

    The generic adapter matches every model with ``get_image_features``, ``get_decoder`` and an image token id, so it
    is tried after all the others: a family adapter wins wherever it comes from (tokred, an installed plugin or
    ``register_plugin``).
    """
    for adapter in sorted(adapters, key=lambda a: a is ModelAdapter):  # stable: registration order otherwise
        if adapter.matches(model):
            return adapter
    return None


@hookimpl
def tokred_register_adapters(register: Callable[[type[Any]], None]) -> None:
    """Family adapters first, the generic one last (``tokred_model_adapter`` takes the first match)."""
    for adapter in (QwenVLAdapter, Gemma3Adapter, PaliGemmaAdapter, AnyresAdapter, ModelAdapter):
        register(adapter)
