"""PrefixKV's offline step: per-layer KV retention from one global cutoff on the layers' importance distributions.

For every calibration sample the unpruned prefill runs once with a recording KV compressor (it keeps every entry and
stores each layer's key importance: head-mean attention summed over the query rows, from the SDPA-safe capture).
`tokred.ops.kv.cutoff_evictions` then turns the sample's per-layer importance into per-layer evictions whose total is
``(1 - retention)`` of all entries; the recipe holds each layer's mean kept share over the samples.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from tokred._components import Strategy
from tokred._kv import BaseKVCompressor, KVContext
from tokred.ops.kv import cutoff_evictions, key_importance


class RecordingCompressor(BaseKVCompressor):
    """Keeps every KV entry and records each layer's key importance (calibration only, not registered)."""

    name = "prefixkv-recorder"
    paper = "PrefixKV, arXiv:2412.03409"
    observes: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, torch.Tensor] = {}

    def observe(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, scaling: float, real: torch.Tensor
    ) -> torch.Tensor:
        return key_importance(query, key, scaling=scaling, real=real)

    def keep(self, ctx: KVContext) -> torch.Tensor | None:
        if ctx.importance is not None:
            self.seen[ctx.layer] = ctx.importance[0][ctx.real[0]].cpu()  # (n,) real entries of the single sample
        return None


class _Recording(Strategy):
    """Records KV importance without reducing anything."""

    name = "prefixkv-recording"

    def build(self) -> tuple[None, None, None]:
        self.kv_compressor = RecordingCompressor()
        return None, None, None


@torch.no_grad()
def layer_importance(model: Any, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Key importance of every decoder layer in the unpruned prefill of one sample, one (n,) tensor per layer."""
    import tokred

    strategy = _Recording()
    with tokred.patch(model, strategy):
        model(**inputs, use_cache=True)
    seen = strategy.kv_compressor.seen
    return [seen[i] for i in sorted(seen)]


def fit_retention(
    model: Any, inputs: list[dict[str, torch.Tensor]], retention: float, *, first: int = 4, last: int = 1
) -> dict[str, Any]:
    """The recipe body: each layer's mean kept share of the prompt's KV entries over the calibration samples.

    Args:
        model: The model.
        inputs: Single-sample calibration inputs.
        retention: Share of all KV entries (all layers) to keep.
        first: Leading tokens always kept.
        last: Trailing tokens always kept.

    Returns:
        ``per_layer`` (kept share per layer), ``achieved`` (mean kept share over layers and samples) and details.
    """
    shares: list[list[float]] = []
    for batch in inputs:
        imp = layer_importance(model, batch)
        n, layers = int(imp[0].numel()), len(imp)
        evicted = cutoff_evictions(imp, (1.0 - retention) * n * layers, first + last)
        shares.append([1.0 - e / n for e in evicted])
    per_layer = [float(sum(col) / len(col)) for col in zip(*shares)]
    achieved = sum(sum(row) / len(row) for row in shares) / len(shares)
    return {"per_layer": per_layer, "achieved": {"retention": achieved}, "details": {"first": first, "last": last}}
