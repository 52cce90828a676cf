"""PrefixKV: after the prefill, every decoder layer keeps its own calibrated share of the most important KV entries.

Wang et al., "PrefixKV: Adaptive Prefix KV Cache is What Vision Instruction-Following Models Need for Efficient
Generation", arXiv:2412.03409. Implemented from the paper and the tokred dossier (field-2026-12.md, seed methods), not
from the reference code.

The importance of a key is the head-mean attention it receives, summed over the prefill's query rows. Offline, each
layer's sorted importance is normalised into a cumulative distribution and one global cutoff is searched so that the
total eviction over all layers is ``1 - retention`` of the entries; the per-layer kept shares form the recipe
(`tokred calibrate prefixkv`). At inference each layer keeps its first ``first`` and last ``last`` prompt tokens and
the highest-importance ones up to its share; generated tokens are always appended.

Where tokred differs from the reference code: batches of any size work (each row keeps its share of its real tokens;
shorter rows fill the rectangular cache with their masked padding entries), the importance comes from captured
queries and keys (any SDPA/eager model, no ``output_attentions``), decode positions continue from the original prompt
length and each layer's mask columns follow its kept entries; the decode-time eviction of one token per step at a
fixed distance is not done (the cache keeps every generated token), and the recipe is the mean kept share per layer
over the calibration samples (the reference writes one line per sample).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from pydantic import Field

from tokred._components import BaseMerger, BaseScheduler, BaseScorer, ComponentConfig, Strategy
from tokred._kv import BaseKVCompressor, KVContext
from tokred.errors import ConfigError
from tokred.hookspecs import hookimpl
from tokred.ops.kv import key_importance, kv_keep_index


class PrefixKVCompressor(BaseKVCompressor):
    """PrefixKV's KV compressor: per layer, the first and last tokens plus the most-attended keys up to the layer's
    kept share (``ratios``, from a recipe)."""

    name = "prefixkv"
    paper = "PrefixKV, arXiv:2412.03409"
    observes: ClassVar[bool] = True

    class Config(ComponentConfig):
        first: int = Field(4, ge=0, le=64, description="Leading prompt tokens every layer always keeps.")
        last: int = Field(1, ge=0, le=64, description="Trailing prompt tokens every layer always keeps.")

    config: Config

    def __init__(self, config: ComponentConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.ratios: list[float] | None = None  # kept share per layer, set from the recipe

    def observe(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, scaling: float, real: torch.Tensor
    ) -> torch.Tensor:
        return key_importance(query, key, scaling=scaling, real=real)  # (B, N)

    def keep(self, ctx: KVContext) -> torch.Tensor | None:
        if self.ratios is None:
            raise ConfigError("kv-compressor 'prefixkv' has no per-layer ratios; the strategy loads them from a recipe")
        ratio = self.ratios[ctx.layer]
        if ratio >= 1.0:
            return None
        if ctx.importance is None:
            raise ConfigError(f"kv-compressor 'prefixkv' saw no attention at layer {ctx.layer}")
        n = ctx.lengths  # (B,)
        evict = torch.round((1.0 - ratio) * n.double()).long()
        protect = torch.clamp(n, max=self.config.first + self.config.last)
        keep = torch.maximum(n - evict, protect)  # (B,)
        if bool((keep == n).all()):
            return None
        return kv_keep_index(ctx.importance, ctx.real, keep, first=self.config.first, last=self.config.last)


class PrefixKVStrategy(Strategy):
    """PrefixKV: compress each layer's KV cache after the prefill to its calibrated share of the prompt's entries.

    Visual and text tokens are treated alike (PrefixKV compresses the whole prompt's cache); the prefill itself is
    unchanged, the decode steps read fewer keys.
    """

    name = "prefixkv"
    paper = "PrefixKV, arXiv:2412.03409"

    class Config(ComponentConfig):
        retention: float = Field(
            0.5, gt=0.0, le=1.0, description="Share of the prompt's KV entries kept over all layers (1 = keep all)."
        )
        recipe: str | None = Field(
            None, description="Recipe file from `tokred calibrate prefixkv`; default: the cached one for this model."
        )
        samples: int = Field(32, ge=1, le=4096, description="Calibration samples when no recipe is cached yet.")
        first: int = Field(4, ge=0, le=64, description="Leading prompt tokens every layer always keeps.")
        last: int = Field(1, ge=0, le=64, description="Trailing prompt tokens every layer always keeps.")

    config: Config

    def build(self) -> tuple[BaseMerger | None, BaseScorer | None, BaseScheduler | None]:
        self.kv_compressor = PrefixKVCompressor(first=self.config.first, last=self.config.last)
        return None, None, None

    def prepare(self, model: Any) -> None:
        """Load the per-layer shares: ``recipe``, else the cached recipe for this model, else calibrate (cached)."""
        from tokred.calibration import decoder_depth, resolve_recipe

        c = self.config
        if c.recipe is None and c.retention == 1.0:
            self.kv_compressor.ratios = [1.0] * decoder_depth(model)
            return
        recipe = resolve_recipe(
            "prefixkv", model, "retention", c.retention, c.recipe, c.samples, first=c.first, last=c.last
        )
        self.kv_compressor.ratios = [float(r) for r in recipe["per_layer"]]


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(PrefixKVStrategy)
