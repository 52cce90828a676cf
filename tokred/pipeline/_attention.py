"""Registered attention functions that capture post-RoPE queries and keys for scorers, then run the stock kernel.

Every transformers 5.x attention module calls the attention function registered under its config's attention
implementation, ``(module, query, key, value, mask, scaling=..., ...)``, after RoPE and after the cache update.
tokred registers ``tokred_sdpa`` and ``tokred_eager`` (through the transformers seam, `tokred.adapters.hf`, which
also pairs each with the stock mask function): at a scoring layer of a prefill they hand the queries and keys to the
run state (the scorer then computes only the softmax rows it needs), and in every case they call the stock SDPA or
the model's own eager function unchanged, so outputs are bitwise identical. Attention weights are never requested.
"""

from __future__ import annotations

from typing import Any

import torch

from tokred.adapters import hf

SDPA_NAME = "tokred_sdpa"
EAGER_NAME = "tokred_eager"
CAPTURE_ATTR = "_tokred_capture"
KV_ATTR = "_tokred_kv"  # (KV stage, layer): the KV stage observes every prefill layer's queries and keys

_registered = False


class ProbeDone(Exception):  # noqa: N818 - control flow, not an error
    """Raised by the attention function once a projection-only pass has captured its queries and keys, so that the
    attention itself (and the output projection) never runs for it."""


def _capture(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, kwargs: dict[str, Any]) -> None:
    tag = module.__dict__.get(CAPTURE_ATTR)
    if tag is None:
        return
    state, layer = tag
    if state.phase != "prefill" or query.shape[2] != key.shape[2]:
        return
    if state.probing == layer:
        state.capture(layer, query, key, hf.attention_scaling(module, kwargs, query.shape[-1]))
        raise ProbeDone
    if layer in state.capture_layers:
        state.capture(layer, query, key, hf.attention_scaling(module, kwargs, query.shape[-1]))


def _observe(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, kwargs: dict[str, Any]) -> None:
    tag = module.__dict__.get(KV_ATTR)
    if tag is not None:
        tag[0].observe(tag[1], query, key, kwargs, module)


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
        What the stock SDPA attention function returns.
    """
    _capture(module, query, key, kwargs)
    _observe(module, query, key, kwargs)
    return hf.sdpa_attention(module, query, key, value, attention_mask, **kwargs)


def tokred_eager(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """The model's own eager attention function (from the module's modeling file) plus capture."""
    _capture(module, query, key, kwargs)
    _observe(module, query, key, kwargs)
    return hf.eager_attention(module)(module, query, key, value, attention_mask, **kwargs)


def register_attention_functions() -> None:
    """Register ``tokred_sdpa`` / ``tokred_eager`` and their mask functions (idempotent)."""
    global _registered
    if _registered:
        return
    hf.register_attention(SDPA_NAME, tokred_sdpa, like="sdpa")
    hf.register_attention(EAGER_NAME, tokred_eager, like="eager")
    _registered = True


def wrapped_name(implementation: str) -> str | None:
    """The tokred name wrapping a stock attention implementation, or ``None`` if it cannot be wrapped."""
    return {"sdpa": SDPA_NAME, "eager": EAGER_NAME, SDPA_NAME: SDPA_NAME, EAGER_NAME: EAGER_NAME}.get(implementation)
