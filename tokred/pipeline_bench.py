"""Prefill benchmark of the pipeline: measured speedup of in-LLM dropping vs the FLOPs prediction, and overhead.

A LLaVA-1.5-shaped model with reduced depth and random weights (Llama decoder, hidden 2048, 16 heads, MLP 5632,
8 layers; a tiny CLIP tower producing 576 visual tokens) runs a prefill of 576 visual + 64 text tokens in three
variants, timed interleaved (``tokred.bench.time_interleaved``, median):

* ``stock``: the unpatched model;
* ``patched-keep-all``: patched with FastV at ``keep_ratio=1`` (hooks installed, nothing dropped): the overhead;
* ``fastv``: patched with FastV dropping half of the visual tokens from layer 2 on.

The three variants are separate module objects that share one set of weights, so no patch is applied or removed
inside the timed region. This is a benchmark, not a test: it reports ratios.

Example:
    >>> from tokred.pipeline_bench import pipeline_benchmark
    >>> report = pipeline_benchmark(hidden_size=64, num_layers=4, repeats=1, warmup=0)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from typing import Any

import torch


def _llava_config(hidden_size: int, num_layers: int, intermediate_size: int, heads: int) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, image_size=336, patch_size=14
    )
    text = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=31999,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )


def _share_weights(model: Any) -> Any:
    """A second module tree over the same parameter and buffer tensors (no extra weight memory)."""
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        twin = LlavaForConditionalGeneration(model.config)
    twin.load_state_dict(model.state_dict(), assign=True)
    for name, buf in model.named_buffers():  # non-persistent buffers (rotary inv_freq) are not in the state dict
        owner, _, leaf = name.rpartition(".")
        twin.get_submodule(owner).register_buffer(leaf, buf, persistent=False)
    twin.eval()
    twin.set_attn_implementation("sdpa")
    return twin


def _inputs(config: Any, visual: int, text: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    before = min(35, text - 1)  # LLaVA-1.5's system prompt sits before the image
    ids = torch.randint(3, 31000, (1, visual + text), generator=gen)
    ids[0, before : before + visual] = config.image_token_id
    size = config.vision_config.image_size
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(1, 3, size, size, generator=gen),
    }


def pipeline_benchmark(
    hidden_size: int = 2048,
    num_layers: int = 8,
    intermediate_size: int = 5632,
    heads: int = 16,
    visual: int = 576,
    text: int = 64,
    layer: int = 2,
    keep_ratio: float = 0.5,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    seed: int = 0,
    strategies: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Time prefill of the stock model, the patched-but-keep-all model and each strategy; compare with FLOPs.

    Args:
        hidden_size: Decoder width.
        num_layers: Decoder depth.
        intermediate_size: MLP width.
        heads: Attention heads (no GQA, like LLaVA-1.5's Vicuna).
        visual: Visual tokens (the CLIP tower's patch count must match: 336 px / 14 px patches = 576).
        text: Text tokens.
        layer: First layer that sees the reduced set (FastV's K), for the default ``fastv`` variant.
        keep_ratio: Fraction of visual tokens FastV keeps from ``layer`` on, for the default ``fastv`` variant.
        repeats: Timed interleaved rounds.
        warmup: Untimed rounds.
        threads: ``torch.set_num_threads`` for the run (``None``: leave as is).
        seed: Seed of weights and inputs.
        strategies: Variants to time, ``{label: {"name": strategy, **options}}``; default: FastV with ``layer`` and
            ``keep_ratio``.

    Returns:
        A dict with the timing medians (s), per strategy ``measured_speedup`` (stock / strategy),
        ``flops_speedup`` (llm-viewer convention, from the tokens each layer processed), ``efficiency``
        (measured / predicted) and ``component_share`` (time inside the strategy's scorer and merger as a share of
        its prefill time), the keep-all ``overhead`` (patched-keep-all / stock - 1) and the tokens per layer.
    """
    from transformers import LlavaForConditionalGeneration

    from tokred.bench import time_interleaved
    from tokred.pipeline import patch

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    variants = strategies or {"fastv": {"name": "fastv", "layer": layer, "keep_ratio": keep_ratio}}
    config = _llava_config(hidden_size, num_layers, intermediate_size, heads)
    if (config.vision_config.image_size // config.vision_config.patch_size) ** 2 != visual:
        config.vision_config.image_size = int(round(visual**0.5)) * config.vision_config.patch_size
    stock = LlavaForConditionalGeneration(config).eval()
    stock.set_attn_implementation("sdpa")
    inputs = _inputs(config, visual, text, seed)
    models = {"stock": stock, "patched-keep-all": _share_weights(stock)}
    handles = {"patched-keep-all": patch(models["patched-keep-all"], "fastv", layer=layer, keep_ratio=1.0)}
    timers: dict[str, _ComponentTimer] = {}
    for label, spec in variants.items():
        models[label] = _share_weights(stock)
        opts = {k: v for k, v in spec.items() if k != "name"}
        handles[label] = patch(models[label], spec["name"], **opts)
        timers[label] = _ComponentTimer(handles[label].strategy)

    def run(model: Any) -> Any:
        with torch.no_grad():
            return model(**inputs, use_cache=True, logits_to_keep=1).logits

    try:
        calls = {label: functools.partial(run, model) for label, model in models.items()}
        timings = time_interleaved(calls, warmup=warmup, repeats=repeats)
        tokens = {label: list(h.stats.tokens_per_layer) for label, h in handles.items()}
    finally:
        for h in handles.values():
            h.remove()
        for t in timers.values():
            t.restore()
    return _report(config, timings, tokens, timers, repeats + warmup)


class _ComponentTimer:
    """Accumulates the wall time spent inside a strategy's scorer and merger (instance-level wrappers)."""

    def __init__(self, strategy: Any) -> None:
        self.seconds = 0.0
        self._restore: list[Any] = []
        for component, method in ((strategy.scorer, "score"), (strategy.merger, "merge")):
            if component is not None:
                self._wrap(component, method)

    def _wrap(self, component: Any, method: str) -> None:
        import time

        original = getattr(component, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(component, method, timed)
        self._restore.append((component, method))

    def restore(self) -> None:
        for component, method in self._restore:
            delattr(component, method)  # drop the instance attribute; the class method shows through again


def _report(
    config: Any, timings: dict[str, Any], tokens: dict[str, list[int]], timers: dict[str, _ComponentTimer], runs: int
) -> dict[str, Any]:
    from tokred.flops import prefill_flops

    med = {k: v.median for k, v in timings.items()}
    full = prefill_flops(config.text_config, tokens["patched-keep-all"])
    per_strategy = {}
    for label, timer in timers.items():
        predicted = full / prefill_flops(config.text_config, tokens[label])
        measured = med["stock"] / med[label]
        per_strategy[label] = {
            "measured_speedup": measured,
            "flops_speedup": predicted,
            "efficiency": measured / predicted,
            "min_speedup": timings["stock"].min / timings[label].min,
            "component_share": timer.seconds / (timings[label].mean * runs) if timings[label].mean else 0.0,
        }
    return {
        "median_s": med,
        "min_s": {k: v.min for k, v in timings.items()},
        "spread_s": {k: v.p75 - v.p25 for k, v in timings.items()},
        "strategies": per_strategy,
        "overhead": med["patched-keep-all"] / med["stock"] - 1.0,
        "min_overhead": timings["patched-keep-all"].min / timings["stock"].min - 1.0,
        "tokens_per_layer": tokens,
        "threads": torch.get_num_threads(),
        "repeats": len(next(iter(timings.values())).samples),
    }
