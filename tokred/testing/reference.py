"""An explicit no-cache reference for in-LLM pruning: the unpatched decoder run layer by layer on the kept tokens.

The reference never uses tokred's hooks or a KV cache: it runs the *unpatched* model once on the full sequence
(prompt + generated tokens) to collect the decoder's inputs (embeddings, per-layer RoPE cos/sin, position ids and stock
masks, and DeepStack features where the model has them), then runs the decoder layers by hand, each on the token subset
it keeps (original positions, or with ``positions="reindex"`` positions renumbered over the kept tokens), and applies
the final norm and LM head to the last token. tokred's tests compare patched
``generate()`` logits with it; plugin authors can do the same for their own scorers and schedulers.

Example:
    >>> import torch, tokred
    >>> from tokred.testing.models import tiny_model
    >>> from tokred.testing.reference import reference_last_logits
    >>> model, make = tiny_model("llava")
    >>> inputs = make()
    >>> with tokred.patch(model, "fastv") as handle, torch.no_grad():
    ...     logits = model(**inputs).logits[:, -1]
    >>> ref = reference_last_logits(model, inputs, handle.stats.kept_indices, inputs["input_ids"].shape[1])
    >>> bool((logits - ref).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from tokred.adapters import hf

__all__ = ["capture_decoder_inputs", "extend_prompt", "reference_last_logits"]


def capture_decoder_inputs(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[Any], Any]:
    """Run the unpatched model without cache on ``inputs``.

    Returns:
        ``(inputs_embeds (B, N, C), per-layer (position_embeddings, attention_mask, position_ids), injection)`` where
        ``injection`` is DeepStack's ``(visual mask (B, N), per-layer (V, C) features)`` or ``None``.
    """
    dec = model.get_decoder()
    seen: dict[str, Any] = {}
    layers: list[Any] = [None] * len(dec.layers)

    def dec_hook(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        call = hf.CallArgs(args, kwargs)
        seen["embeds"] = call.inputs_embeds
        if call.deepstack_embeds is not None:
            seen["injection"] = (call.visual_pos_masks.bool(), list(call.deepstack_embeds))

    def layer_hook(i: int, mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        call = hf.CallArgs(args, kwargs)
        if i == 0:  # what the layers see (Granite scales the embeddings inside the decoder)
            seen["embeds"] = call.hidden_states
        layers[i] = (call.position_embeddings, call.attention_mask, call.position_ids)

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


def extend_prompt(model: Any, inputs: dict[str, torch.Tensor], generated: torch.Tensor) -> dict[str, torch.Tensor]:
    """The forward kwargs of prompt + ``generated`` (B, G) tokens, for a no-cache recomputation of ``generate()``.

    The ids are appended, the attention mask extended with ones, and every per-token side input of the prompt's shape
    (``token_type_ids``, ``mm_token_type_ids``) with the value ``generate()`` gives a generated token (the adapter's
    ``generated_token_types``: 0 for text, 1 for PaliGemma's causal suffix, which keeps the prompt's bidirectional
    prefix from reaching the generated tokens).
    """
    from tokred.pipeline import select_adapter

    full = dict(inputs)
    ids = inputs[hf.INPUT_IDS]
    g = generated.shape[1]
    full[hf.INPUT_IDS] = torch.cat([ids, generated.to(ids)], 1)
    mask = inputs.get(hf.ATTENTION_MASK)
    if mask is not None:
        full[hf.ATTENTION_MASK] = torch.nn.functional.pad(mask, (0, g), value=1)
    for key, fill in select_adapter(model).generated_token_types().items():
        value = inputs.get(key)
        if torch.is_tensor(value) and value.shape == ids.shape:
            full[key] = torch.nn.functional.pad(value, (0, g), value=fill)
    return full


def _gather(t: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """Gather positions ``idx`` (B, K) on ``dim`` of ``t`` whose batch dim is 0 (size B or 1)."""
    b, k = idx.shape
    if t.shape[0] == 1 and b > 1:
        t = t.expand(b, *t.shape[1:])
    shape = [1] * t.dim()
    shape[0], shape[dim] = b, k
    return t.gather(dim, idx.view(shape).expand(*t.shape[:dim], k, *t.shape[dim + 1 :]))


def reference_last_logits(
    model: Any,
    inputs: dict[str, torch.Tensor],
    keeps: dict[int, torch.Tensor],
    prompt_len: int,
    positions: str = "original",
) -> torch.Tensor:
    """Logits of the last token (B, V) with layer i >= min(keeps) running only on its kept prompt tokens + the rest.

    Args:
        model: The unpatched model.
        inputs: Forward kwargs of the full sequence (prompt + generated so far).
        keeps: Layer -> kept original prompt indices (B, K) from that layer on (tokred's ``stats.kept_indices``).
        prompt_len: Prompt length N; tokens after it (generated) are always kept.
        positions: ``"original"`` (kept tokens keep their positions) or ``"reindex"``: every token a layer runs on
            moves down by the tokens dropped before it (``0..n-1`` without padding; 1-D RoPE models, no padding
            after the prompt).
    """
    embeds, layers, injection = capture_decoder_inputs(model, inputs)
    b, total = embeds.shape[:2]
    h = embeds.clone()
    active = torch.arange(total).expand(b, total)
    dec = model.get_decoder()
    state = _layer_state(dec.layers[0])
    extras = _layer_extras(model, inputs)
    types = list(getattr(dec.config, "layer_types", None) or [])
    with torch.no_grad():
        for i, layer in enumerate(dec.layers):
            if i in keeps:
                gen = torch.arange(prompt_len, total).expand(b, -1)
                active = torch.cat([keeps[i], gen], 1)
            side = layers[i] if positions == "original" else _reindexed(dec, h, active, layers[i], i)
            stateful = i < len(types) and types[i] in hf.STATE_LAYER_TYPES
            h = _run_layer(layer, h, active, side, state, extras[i], stateful)
            if injection is not None and i < len(injection[1]):  # DeepStack: features added after layer i
                vis = injection[0]
                h = h.clone()
                h[vis] = h[vis] + injection[1][i]
    return _head_logits(model, inputs, h)


def _head_logits(model: Any, inputs: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """Last-token logits (B, V) of the model's own final norm and head (whatever it names its norm; LM head, logit
    scaling or soft-capping) on ``h`` (B, N, C), put in place of the last decoder layer's output by a hook."""

    def swap(mod: Any, args: Any, out: Any) -> Any:
        return (h, *out[1:]) if isinstance(out, tuple) else h

    hook = model.get_decoder().layers[-1].register_forward_hook(swap)
    try:
        with torch.no_grad():
            return model(**inputs, use_cache=False).logits[:, -1].float()
    finally:
        hook.remove()


def _layer_extras(model: Any, inputs: dict[str, torch.Tensor]) -> list[tuple[Any, ...]]:
    """The positional inputs after the hidden states of every decoder layer (Gemma 4's per-layer input embeddings
    (B, N, D)) in an unpatched no-cache run on ``inputs``."""
    layers = model.get_decoder().layers
    seen: list[tuple[Any, ...]] = [()] * len(layers)

    def hook(i: int, mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen[i] = tuple(args[1:])

    handles = [
        layer.register_forward_pre_hook(functools.partial(hook, i), with_kwargs=True) for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen


def _layer_state(layer: Any) -> dict[str, Any]:
    """Fresh dicts for the dict-typed keywords of a decoder layer: state the layers of one forward share (Gemma 4's
    shared K/V), passed to every layer of the reference run as the decoder does."""
    params = inspect.signature(layer.forward).parameters.values()
    return {p.name: {} for p in params if p.kind == p.POSITIONAL_OR_KEYWORD and "dict[" in str(p.annotation)}


def _run_layer(
    layer: Any,
    h: torch.Tensor,
    active: torch.Tensor,
    side: Any,
    state: dict[str, Any] | None = None,
    extras: tuple[Any, ...] = (),
    stateful: bool = False,
) -> torch.Tensor:
    """One decoder layer on the ``active`` (B, K) rows of ``h`` (B, N, C); returns ``h`` with those rows updated.

    ``state`` is shared per-forward layer state; ``extras`` the layer's other positional inputs, per-token ones
    (B, N, ...) gathered at ``active`` like the hidden states. A ``stateful`` layer (linear attention, convolution)
    takes a 2-D padding mask (B, N), gathered on its columns, or none."""
    b = h.shape[0]
    pe, mask = side[:2]
    if pe is None or len(side) > 3:  # NoPE layer (no position embeddings), or already for the active rows
        pe_sub = pe
    else:
        pe_sub = tuple(_gather(t, active, t.dim() - 2) for t in pe)
    if stateful:
        mask = None if mask is None else _gather(mask, active, 1)  # (B, K) padding mask of the kept rows
    elif mask is None:
        k = active.shape[1]
        mask = torch.ones(k, k, dtype=torch.bool).tril()[None, None].expand(b, 1, k, k)
    else:
        mask = _gather(_gather(mask, active, 2), active, 3)
    kwargs: dict[str, Any] = {}
    call = hf.CallArgs((), kwargs)
    call.attention_mask, call.position_embeddings, call.position_ids, call.cache = mask, pe_sub, None, None
    n = h.shape[1]
    rest = [_gather(a, active, 1) if torch.is_tensor(a) and a.dim() >= 3 and a.shape[1] == n else a for a in extras]
    out = layer(_gather(h, active, 1), *rest, use_cache=False, **kwargs, **(state or {}))
    out = out[0] if isinstance(out, tuple) else out
    return h.scatter(1, active[:, :, None].expand(-1, -1, h.shape[-1]), out)


def _reindexed(dec: Any, h: torch.Tensor, active: torch.Tensor, side: Any, layer: int) -> tuple[Any, ...]:
    """``side`` with RoPE recomputed at renumbered positions: original position minus the tokens dropped before.

    Returns ``(position_embeddings already for the active rows, mask, position ids, True)``.
    """
    pe, mask, pid = side
    pid = pid.expand(active.shape[0], -1)
    new = pid.gather(1, active) - (active - torch.arange(active.shape[1]))  # (B, K)
    rope = dec.rotary_emb
    types = list(getattr(dec.config, "layer_types", None) or [])
    if types and "layer_type" in inspect.signature(rope.forward).parameters:
        cos_sin = rope(h, new, types[layer])
    else:
        cos_sin = rope(h, new)
    return tuple(cos_sin), mask, new, True
