"""The fourth role: a *KV compressor* chooses, after the prefill, which KV-cache entries each decoder layer keeps.

The pipeline's KV stage (`tokred.pipeline._kv`) runs it in two steps. During the prefill, at every decoder layer, the
stage hands the layer's post-RoPE queries and keys to ``observe`` (captured by the same SDPA-safe attention function
as the in-LLM scorers; never ``output_attentions``), which returns one importance per key and lets the stage drop the
queries and keys at once. After the last layer, the stage calls ``keep`` once per layer with what was observed; the
returned indices select that layer's cache entries (through the transformers seam) and the stage keeps decode
consistent: positions continue from the original prompt length and every layer's mask columns follow its entries.

Example:
    >>> import torch
    >>> from tokred._kv import KVContext
    >>> ctx = KVContext(layer=0, num_layers=2, importance=torch.rand(1, 6), real=torch.ones(1, 6, dtype=torch.bool),
    ...                 visual_mask=torch.zeros(1, 6, dtype=torch.bool))
    >>> ctx.lengths.tolist()
    [6]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from tokred._components import BaseComponent, Kind


@dataclass
class KVContext:
    """What a KV compressor sees for one layer after the prefill.

    Attributes:
        layer: Decoder layer index.
        num_layers: Decoder depth.
        importance: What ``observe`` returned for this layer, shape (B, N_l), or ``None`` if it observes nothing.
        real: Which of the layer's cache entries are real tokens (not padding), shape (B, N_l) bool.
        visual_mask: Which entries are visual tokens, shape (B, N_l) bool.
    """

    layer: int
    num_layers: int
    importance: torch.Tensor | None
    real: torch.Tensor
    visual_mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Real entries per row, shape (B,) long."""
        return self.real.long().sum(1)


class BaseKVCompressor(BaseComponent):
    """Base class of KV compressors: set ``name``, ``Config``, implement ``keep`` (and ``observe`` if it reads
    attention).

    ``observes = True`` asks the pipeline to capture every layer's queries and keys during the prefill and to call
    ``observe`` with them. ``keep`` returns, per layer, the indices of the cache entries to keep, shape (B, K),
    ascending and the same K in every row (pad a row with its padding entries); ``None`` keeps the layer whole.
    """

    kind: ClassVar[Kind] = "kv-compressor"  # type: ignore[assignment]
    observes: ClassVar[bool] = True

    def observe(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, scaling: float, real: torch.Tensor
    ) -> torch.Tensor:
        """Importance of every key of one prefill layer.

        Args:
            layer: Decoder layer index.
            query: Post-RoPE queries, shape (B, H, N, D).
            key: Post-RoPE keys, shape (B, H_kv, N, D).
            scaling: Softmax scale.
            real: Real tokens, shape (B, N) bool.

        Returns:
            Importance, shape (B, N).
        """
        raise NotImplementedError

    def keep(self, ctx: KVContext) -> torch.Tensor | None:
        """Entries of layer ``ctx.layer``'s cache to keep, shape (B, K) long ascending, or ``None`` for all."""
        raise NotImplementedError
