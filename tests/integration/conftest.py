"""Shared helpers of the pipeline integration tests: tiny models and an explicit no-cache reference.

The reference never uses tokred's hooks or a KV cache: it runs the *unpatched* model once on the full sequence
(prompt + generated tokens) to collect the decoder's inputs (embeddings, per-layer RoPE cos/sin and stock masks),
then runs the decoder layers by hand, each on the token subset it keeps (original positions), and applies the final
norm and LM head to the last token.
"""

from __future__ import annotations

import functools

import pytest
import torch

from tokred.adapters import hf
from tokred.testing.models import tiny_model

FAMILIES = [
    "llava",
    "llava_next",
    "llava_onevision",
    "qwen2_vl",
    "qwen2_5_vl",
    "idefics3",
    "smolvlm",
    "internvl",
    "gemma3",
    "qwen3_vl",
]


@functools.cache
def _cached(family: str):
    return tiny_model(family)


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def tiny(family):
    """(model, make_inputs) of a family, built once per session (tests must leave it unpatched)."""
    model, make = _cached(family)
    yield model, make
    assert "_tokred_handle" not in model.__dict__, "a test left the model patched"


def _capture_decoder_inputs(model, inputs):
    """Run the unpatched model without cache; return inputs_embeds, per-layer (position_embeddings, mask) and the
    DeepStack injection (visual mask (B, N), per-layer (V, C) features) or None."""
    dec = model.get_decoder()
    seen: dict = {}
    layers: list = [None] * len(dec.layers)

    def dec_hook(mod, args, kwargs):
        call = hf.CallArgs(args, kwargs)
        seen["embeds"] = call.inputs_embeds
        if call.deepstack_embeds is not None:
            seen["injection"] = (call.visual_pos_masks.bool(), list(call.deepstack_embeds))

    def layer_hook(i, mod, args, kwargs):
        layers[i] = (kwargs.get("position_embeddings"), kwargs.get("attention_mask"))

    handles = [dec.register_forward_pre_hook(dec_hook, with_kwargs=True)]
    handles += [
        layer.register_forward_pre_hook(functools.partial(layer_hook, i), with_kwargs=True)
        for i, layer in enumerate(dec.layers)
    ]
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen["embeds"], layers, seen.get("injection")


def _gather(t, idx, dim):
    """Gather positions idx (B, K) on dim of t whose batch dim is 0 (size B or 1)."""
    b, k = idx.shape
    if t.shape[0] == 1 and b > 1:
        t = t.expand(b, *t.shape[1:])
    shape = [1] * t.dim()
    shape[0], shape[dim] = b, k
    return t.gather(dim, idx.view(shape).expand(*t.shape[:dim], k, *t.shape[dim + 1 :]))


def reference_last_logits(model, inputs, keeps: dict[int, torch.Tensor], prompt_len: int):
    """Logits of the last token (B, V) with layer i >= min(keeps) running only on its kept prompt tokens + the rest.

    Args:
        model: The unpatched model.
        inputs: Forward kwargs of the full sequence (prompt + generated so far).
        keeps: Layer -> kept original prompt indices (B, K) from that layer on (tokred's ``stats.kept_indices``).
        prompt_len: Prompt length N; tokens after it (generated) are always kept.
    """
    embeds, layers, injection = _capture_decoder_inputs(model, inputs)
    b, total = embeds.shape[:2]
    h = embeds.clone()
    active = torch.arange(total).expand(b, total)
    dec = model.get_decoder()
    with torch.no_grad():
        for i, layer in enumerate(dec.layers):
            if i in keeps:
                gen = torch.arange(prompt_len, total).expand(b, -1)
                active = torch.cat([keeps[i], gen], 1)
            pe, mask = layers[i]
            pe_sub = tuple(_gather(t, active, t.dim() - 2) for t in pe)
            if mask is None:
                k = active.shape[1]
                mask = torch.ones(k, k, dtype=torch.bool).tril()[None, None].expand(b, 1, k, k)
            else:
                mask = _gather(_gather(mask, active, 2), active, 3)
            out = layer(
                _gather(h, active, 1),
                attention_mask=mask,
                position_embeddings=pe_sub,
                position_ids=None,
                **{hf.CACHE_KWARG: None},
                use_cache=False,
            )
            out = out[0] if isinstance(out, tuple) else out
            h = h.scatter(1, active[:, :, None].expand(-1, -1, h.shape[-1]), out)
            if injection is not None and i < len(injection[1]):  # DeepStack: features added after layer i
                vis = injection[0]
                h = h.clone()
                h[vis] = h[vis] + injection[1][i]
        last = dec.norm(h[:, -1:])
        return model.lm_head(last)[:, -1].float()
