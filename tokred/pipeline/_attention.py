"""Registered attention functions that capture post-RoPE queries and keys for scorers, then run the stock kernel.

Every transformers 5.x attention module calls ``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation,
eager_attention_forward)(module, query, key, value, mask, scaling=..., ...)`` after RoPE and after the cache update
(tested on transformers 5.23, ``modeling_utils.AttentionInterface``, ``masking_utils.AttentionMaskInterface``,
``integrations/sdpa_attention.sdpa_attention_forward``). tokred registers ``tokred_sdpa`` and ``tokred_eager``: at a
scoring layer of a prefill they hand the queries and keys to the run state (the scorer then computes only the softmax
rows it needs), and in every case they call the stock SDPA or the model's own eager function unchanged, so outputs are
bitwise identical. Each name is paired with the stock mask function in ``AttentionMaskInterface`` (without it
``masking_utils`` silently skips padding masks). ``output_attentions`` is never used.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

SDPA_NAME = "tokred_sdpa"
EAGER_NAME = "tokred_eager"
CAPTURE_ATTR = "_tokred_capture"

_registered = False


def _capture(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, kwargs: dict[str, Any]) -> None:
    tag = module.__dict__.get(CAPTURE_ATTR)
    if tag is None:
        return
    state, layer = tag
    if state.phase == "prefill" and layer in state.capture_layers and query.shape[2] == key.shape[2]:
        scaling = kwargs.get("scaling")
        if scaling is None:
            scaling = getattr(module, "scaling", query.shape[-1] ** -0.5)
        state.capture(layer, query, key, scaling)


def tokred_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Stock SDPA attention plus query/key capture at scoring layers.

    Args:
        module: The attention module (tagged by the pipeline with its run state and layer index).
        query: Post-RoPE queries, shape (B, H, Q, D).
        key: Keys including cached ones, shape (B, H_kv, N, D).
        value: Values, shape (B, H_kv, N, D).
        attention_mask: Whatever the stock mask function built (None or a 4-D mask).
        **kwargs: Passed through (``scaling``, ``dropout``, ...).

    Returns:
        What ``sdpa_attention_forward`` returns.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    _capture(module, query, key, kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def tokred_eager(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """The model's own ``eager_attention_forward`` (looked up in the module's modeling file) plus capture."""
    _capture(module, query, key, kwargs)
    from transformers.models.llama.modeling_llama import eager_attention_forward

    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", eager_attention_forward)
    return eager(module, query, key, value, attention_mask, **kwargs)


def register_attention_functions() -> None:
    """Register ``tokred_sdpa`` / ``tokred_eager`` and their mask functions (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    AttentionInterface.register(SDPA_NAME, tokred_sdpa)
    AttentionInterface.register(EAGER_NAME, tokred_eager)
    AttentionMaskInterface.register(SDPA_NAME, sdpa_mask)
    AttentionMaskInterface.register(EAGER_NAME, eager_mask)
    _registered = True


def wrapped_name(implementation: str) -> str | None:
    """The tokred name wrapping a stock attention implementation, or ``None`` if it cannot be wrapped."""
    return {"sdpa": SDPA_NAME, "eager": EAGER_NAME, SDPA_NAME: SDPA_NAME, EAGER_NAME: EAGER_NAME}.get(implementation)
