"""The lmms-eval backend's model-side work, free of lmms-eval imports: prompts, batches, per-sample reduction
statistics and continuation scores (unit-tested without lmms-eval installed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from tokred.errors import ConfigError

STAT_KEYS = (
    "visual_tokens_in",
    "visual_tokens_into_llm",
    "visual_tokens_out",
    "mean_tokens_per_layer",
    "relative_prefill_flops",
)


@dataclass
class Batch:
    """A left-padded batch of model inputs and each row's counts before any reduction.

    Attributes:
        inputs: Model inputs (``input_ids`` (B, W), ``attention_mask`` (B, W), pixel inputs).
        text_tokens: Non-visual, non-padding tokens per row.
        visual_tokens: Visual placeholder tokens per row.
    """

    inputs: dict[str, torch.Tensor]
    text_tokens: list[int]
    visual_tokens: list[int]


def user_turn(context: str, images: int) -> list[dict[str, Any]]:
    """A one-turn conversation: ``images`` image slots, then the context text (lmms-eval's own visual-first order)."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(images)]
    content.append({"type": "text", "text": context})
    return [{"role": "user", "content": content}]


def with_system(messages: list[dict[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    """``messages`` with a system message first (replacing one already there) when ``system_prompt`` is set."""
    if not system_prompt:
        return messages
    rest = messages[1:] if messages and messages[0].get("role") == "system" else messages
    return [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}, *rest]


def render(processor: Any, messages: list[dict[str, Any]]) -> str:
    """The prompt text of ``messages`` from the processor's chat template, ending with the assistant turn's start.

    Raises:
        ConfigError: If the processor has no chat template (tokred needs one to place the images).
    """
    if getattr(processor, "chat_template", None) is None:
        raise ConfigError(
            f"{type(processor).__name__} has no chat template, so the images cannot be placed in the prompt; use a "
            "chat model whose processor has one"
        )
    return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def check_images(images: Sequence[Any]) -> list[Any]:
    """The images of a request as PIL images (RGB).

    Raises:
        ConfigError: For a video or audio input (paths, dicts, arrays): not supported by this backend yet.
    """
    from PIL import Image

    out = []
    for item in images:
        if isinstance(item, Image.Image):
            out.append(item.convert("RGB"))
            continue
        raise ConfigError(
            f"tokred's lmms-eval backend takes images (PIL), got {type(item).__name__} {str(item)[:60]!r}: video and "
            "audio tasks are not supported by it yet"
        )
    return out


def encode(
    processor: Any,
    prompts: list[str],
    images: list[list[Any]],
    image_token_id: int,
    device: Any,
    suffix_ids: list[torch.Tensor] | None = None,
) -> Batch:
    """Tokenise a batch with left padding, optionally appending ``suffix_ids[i]`` (continuation token ids, (C_i,))
    after row ``i``'s prompt.

    Args:
        processor: The model's processor.
        prompts: One rendered prompt per row.
        images: The images of each row, in prompt order.
        image_token_id: Placeholder id of visual tokens.
        device: Where the inputs go.
        suffix_ids: Continuation ids per row (loglikelihood) or ``None``.

    Returns:
        The batch; pixel inputs only when some row has an image.
    """
    flat = [im for row in images for im in row]
    processor.tokenizer.padding_side = "left"
    kwargs: dict[str, Any] = {"text": prompts, "return_tensors": "pt", "padding": True}
    if flat:
        kwargs["images"] = flat
    enc = processor(**kwargs)
    inputs = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
    if suffix_ids is not None:
        inputs = _append(inputs, suffix_ids, pad_id=_pad_id(processor))
    ids, mask = inputs["input_ids"], inputs["attention_mask"]  # (B, W)
    visual = (ids == image_token_id) & mask.bool()  # (B, W)
    text = (mask.bool() & ~visual).sum(-1).tolist()
    inputs = {k: v.to(device) for k, v in inputs.items()}
    return Batch(inputs, [int(t) for t in text], [int(v) for v in visual.sum(-1).tolist()])


def _pad_id(processor: Any) -> int:
    tok = processor.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad if pad is not None else 0)


def _append(inputs: dict[str, torch.Tensor], suffix_ids: list[torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Append each row's suffix after its (left-padded) prompt and re-left-pad to a common width."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]  # (B, W)
    rows = [torch.cat([ids[b][mask[b].bool()], suffix_ids[b].to(ids.dtype)]) for b in range(ids.shape[0])]
    width = max(int(r.shape[0]) for r in rows)
    new_ids = torch.full((len(rows), width), pad_id, dtype=ids.dtype)  # (B, W')
    new_mask = torch.zeros((len(rows), width), dtype=mask.dtype)  # (B, W')
    for b, row in enumerate(rows):
        new_ids[b, width - row.shape[0] :] = row
        new_mask[b, width - row.shape[0] :] = 1
    out = dict(inputs)
    out["input_ids"], out["attention_mask"] = new_ids, new_mask
    return out


def tokens_per_sample(tokens_per_layer: Sequence[int] | None, batch: Batch, layers: int) -> list[list[int]]:
    """Tokens each decoder layer processed, per row of a left-padded batch.

    The handle reports the padded batch's length per layer. Left padding is never reduced, so row ``i`` processed
    that length minus its own padding, ``W - (text_i + visual_i)`` with ``W`` the padded width (the rule of
    ``tokred compare``). ``None`` (the unpatched model): every layer processed the whole prompt.
    """
    lengths = [t + v for t, v in zip(batch.text_tokens, batch.visual_tokens)]
    if not tokens_per_layer:
        return [[n] * layers for n in lengths]
    width = max(lengths)
    return [[n - (width - length) for n in tokens_per_layer] for length in lengths]


def sample_stats(
    strategy: str,
    batch: Batch,
    tokens_per_layer: Sequence[int] | None,
    text_config: Any,
    convention: Literal["llm-viewer", "fastv"],
) -> list[dict[str, Any]]:
    """Per-row reduction statistics of one prefill: visual tokens in / into the LLM / out of the last layer, tokens
    per layer, prefill FLOPs and their ratio to the unreduced prompt's (same convention)."""
    from tokred.flops import prefill_flops

    layers = int(text_config.num_hidden_layers)
    rows = []
    per_row = tokens_per_sample(tokens_per_layer, batch, layers)
    for text, visual, tokens in zip(batch.text_tokens, batch.visual_tokens, per_row):
        flops = prefill_flops(text_config, tokens, convention)
        base = prefill_flops(text_config, [text + visual] * layers, convention)
        rows.append(
            {
                "strategy": strategy,
                "text_tokens": text,
                "visual_tokens_in": visual,
                "visual_tokens_into_llm": tokens[0] - text,
                "visual_tokens_out": tokens[-1] - text,
                "tokens_per_layer": tokens,
                "mean_tokens_per_layer": sum(tokens) / len(tokens),
                "prefill_flops": flops,
                "relative_prefill_flops": flops / base if base else 1.0,
            }
        )
    return rows


def mean_stats(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means of :data:`STAT_KEYS` over per-request statistics (empty dict for no rows)."""
    if not rows:
        return {}
    return {key: math.fsum(float(r[key]) for r in rows) / len(rows) for key in STAT_KEYS}


def continuation_scores(logits: torch.Tensor, continuations: Sequence[torch.Tensor]) -> list[tuple[float, bool]]:
    """Score each row's continuation from the trailing logits of a left-padded batch.

    Row ``i``'s sequence ends with its ``C_i`` continuation tokens. Token reduction only shortens the visual span
    (text is never dropped), so the last ``C_i + 1`` output positions are the last prompt token and the
    continuation in every row, whatever the strategy did: position ``-(C_i+1)+j`` predicts continuation token ``j``.

    Args:
        logits: Output logits, shape (B, L, V), ``L`` the (possibly reduced) length the decoder kept.
        continuations: Token ids of each row's continuation, shapes (C_i,), ``C_i >= 1``.

    Returns:
        Per row ``(mean negative log-likelihood of the continuation tokens, whether greedy decoding yields them)``:
        the loss convention of lmms-eval's own backends (its ``multiple_choice`` scoring takes the argmin).
    """
    out = []
    for b, cont in enumerate(continuations):
        c = int(cont.shape[0])
        rows = logits[b, -(c + 1) : -1].float()  # (C, V)
        logp = torch.log_softmax(rows, dim=-1)  # (C, V)
        target = cont.to(rows.device).long()  # (C,)
        nll = -logp.gather(-1, target[:, None])[:, 0]  # (C,)
        greedy = bool(torch.equal(rows.argmax(-1), target))
        out.append((float(nll.mean()), greedy))
    return out


def truncate_at_stop(text: str, until: Sequence[str] | str | None) -> str:
    """``text`` cut before the first occurrence of any stop string of ``until``."""
    stops = [until] if isinstance(until, str) else list(until or [])
    cut = len(text)
    for stop in stops:
        if stop:
            i = text.find(stop)
            if i >= 0:
                cut = min(cut, i)
    return text[:cut]


def generation_settings(gen_kwargs: dict[str, Any], default_max_new_tokens: int) -> tuple[dict[str, Any], list[str]]:
    """``generate()`` keyword arguments from a task's ``generation_kwargs`` and its stop strings.

    Greedy unless ``temperature > 0`` (then sampling with ``temperature``/``top_p``); ``max_new_tokens`` from the
    task, else the backend default.
    """
    g = dict(gen_kwargs or {})
    until = g.pop("until", None)
    stops = [until] if isinstance(until, str) else list(until or [])
    temperature = float(g.get("temperature") or 0.0)
    out: dict[str, Any] = {"max_new_tokens": int(g.get("max_new_tokens") or default_max_new_tokens)}
    if temperature > 0:
        out.update(do_sample=True, temperature=temperature)
        if g.get("top_p") is not None:
            out["top_p"] = float(g["top_p"])
    else:
        out["do_sample"] = False
    if int(g.get("num_beams") or 1) > 1:
        out["num_beams"] = int(g["num_beams"])
    return out, stops
