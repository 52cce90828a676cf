"""ARank: the rank of each decoder layer's attention maps, gamma-MoD's signal for which layers are redundant.

Luo et al., "γ-MoD: Exploring Mixture-of-Depth Adaptation for Multimodal Large Language Models", arXiv:2410.13859.
For every decoder layer and head, the attention map of a prompt (causal softmax of ``q·kᵀ``, the diagonal zeroed as
in the paper) is reduced to its numerical rank; a layer's ARank is the mean over its heads, averaged over samples.
Layers with a low ARank are the paper's candidates for Mixture-of-Depths routing.

The maps come from the SDPA-safe capture: a registered attention function receives each layer's post-RoPE queries
and keys, computes the probabilities from them (`tokred.ops.attention.attention_rows`), and then runs the stock SDPA
unchanged; ``output_attentions`` is never asked for. Samples run one at a time (no padding).

Example:
    >>> from tokred.arank import attention_ranks
    >>> from tokred.testing.models import tiny_model
    >>> model, make = tiny_model("llava")
    >>> ranks = attention_ranks(model, [make()])
    >>> len(ranks.per_layer), ranks.tokens
    (4, [75])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tokred.adapters import hf
from tokred.ops.attention import attention_map_rank, attention_rows

ARANK_ATTENTION = "tokred_arank"


@dataclass
class ARankResult:
    """ARank of every decoder layer over some prompts.

    Attributes:
        per_layer: Mean over heads and samples of the attention-map rank, one per decoder layer.
        per_head: Rank of each head, averaged over samples, ``[layer][head]``.
        tokens: Sequence length of each sample (a map of N tokens has rank at most N - 1 once its diagonal is zero).
        samples: Number of samples.
    """

    per_layer: list[float]
    per_head: list[list[float]]
    tokens: list[int]
    samples: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``layer`` rows plus the raw fields)."""
        rows = [
            {"layer": i, "arank": r, "min_head": min(h), "max_head": max(h)}
            for i, (r, h) in enumerate(zip(self.per_layer, self.per_head))
        ]
        return {"method": "arank", "paper": "gamma-MoD, arXiv:2410.13859", "rows": rows, **asdict(self)}


class _Capture:
    """The registered attention function: rank of each head's map at every layer, then the stock SDPA."""

    def __init__(self, layers: dict[int, int]) -> None:
        self.layers = layers  # id(attention module) -> decoder layer
        self.ranks: dict[int, torch.Tensor] = {}  # layer -> (H,) float

    def __call__(
        self, module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any, **kw: Any
    ) -> Any:
        layer = self.layers.get(id(module))
        if layer is not None and query.shape[2] == key.shape[2]:
            b, _, n, d = query.shape
            index = torch.arange(n, device=query.device).expand(b, n)  # (B, N) every row
            probs = attention_rows(query, key, scaling=hf.attention_scaling(module, kw, d), query_index=index)
            self.ranks[layer] = attention_map_rank(probs)[0].double()  # (H,) one sample
        return hf.sdpa_attention(module, query, key, value, mask, **kw)


def attention_ranks(model: Any, samples: Sequence[dict[str, torch.Tensor]]) -> ARankResult:
    """ARank of every decoder layer of ``model`` over ``samples`` (forward kwargs of one unpadded prompt each).

    Args:
        model: A transformers multimodal model that tokred supports (see [`tokred.patch`][tokred.patch]).
        samples: Model inputs, batch size 1 each.

    Returns:
        The per-layer and per-head ranks.

    Raises:
        ValueError: For no samples or a sample with batch size > 1.
    """
    from tokred.pipeline import select_adapter

    if not samples:
        raise ValueError("ARank needs at least one sample")
    adapter = select_adapter(model)
    capture = _Capture({id(attn): i for i, attn in adapter.attention_modules()})
    hf.register_attention(ARANK_ATTENTION, capture, like="sdpa")
    original = hf.text_attn_implementation(adapter.text_config)
    sums: list[torch.Tensor | None] = [None] * adapter.num_layers
    tokens = []
    hf.set_text_attn_implementation(model, ARANK_ATTENTION)
    try:
        for inputs in samples:
            if inputs["input_ids"].shape[0] != 1:
                raise ValueError("ARank runs one prompt at a time; pass samples of batch size 1")
            capture.ranks.clear()
            with torch.no_grad():
                model(**inputs, use_cache=False)
            tokens.append(int(inputs["input_ids"].shape[1]))
            for i, r in capture.ranks.items():
                sums[i] = r if sums[i] is None else sums[i] + r  # type: ignore[operator]
    finally:
        hf.set_text_attn_implementation(model, original)
    heads = [[] if s is None else (s / len(samples)).tolist() for s in sums]
    return ARankResult([sum(h) / len(h) if h else float("nan") for h in heads], heads, tokens, len(samples))


def save_plot(result: ARankResult, path: str | Path, title: str = "ARank per decoder layer") -> Path:
    """Bar plot of the per-layer ARank (min/max over heads as error bars), written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(range(len(result.per_layer)))
    low = [r - min(h) for r, h in zip(result.per_layer, result.per_head)]
    high = [max(h) - r for r, h in zip(result.per_layer, result.per_head)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.3 * len(layers) + 2), 3.2))
    ax.bar(layers, result.per_layer, yerr=[low, high], capsize=2, color="#4c72b0")
    ax.axhline(sum(result.tokens) / len(result.tokens) - 1, color="grey", lw=0.8, ls="--", label="N - 1 (full rank)")
    ax.set(xlabel="decoder layer", ylabel="mean attention-map rank", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_json(result: ARankResult, path: str | Path) -> Path:
    """Write ``result.to_json()`` to ``path``."""
    out = Path(path)
    out.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return out
