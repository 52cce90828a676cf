"""KV stage: after the prefill, each decoder layer's cache keeps only the entries a KV compressor chose.

Design (see docs/concepts/kv-stage.md): during the prefill the attention function hands every layer's post-RoPE
queries and keys to the compressor's ``observe`` (one importance per key; the queries and keys are dropped at once).
A forward hook on the decoder then asks the compressor which entries each layer keeps and gathers them in the cache
through the transformers seam (`tokred.adapters.hf.select_cache_entries`). Decode stays consistent in two ways:

* lengths: the cache reports each layer's *original* length (`hf.pin_kv_lengths`), so the next position ids, the
  cache position and the mask size continue from the prompt length, not from the compressed length;
* masks: the decode mask is built over the original sequence; before each layer runs, its columns are gathered to the
  entries that layer holds (``cat(kept, generated)``), after any gather of the in-LLM stage for pruned layers.

Layers may keep different counts; rows of a padded batch keep the same count (short rows are filled with their
padding entries, which the mask hides).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from tokred._kv import BaseKVCompressor, KVContext
from tokred.adapters import hf
from tokred.errors import PluginOutputError, UnsupportedModeError
from tokred.pipeline._llm import gather_seq
from tokred.pipeline._state import RunState


class KVStage:
    """Installs the decoder and layer hooks of the KV stage of one patch.

    Args:
        adapter: The model adapter.
        state: The run state shared with the other stages (prompt masks, in-LLM kept indices).
        compressor: The KV compressor.
    """

    def __init__(self, adapter: Any, state: RunState, compressor: BaseKVCompressor) -> None:
        self.adapter, self.state, self.compressor = adapter, state, compressor
        self.num_layers = int(adapter.num_layers)
        self.windows = [w for w in adapter.sliding_windows() if w]
        self.prefill = False
        self.active = False
        self.importance: dict[int, torch.Tensor] = {}
        self.local: list[torch.Tensor | None] = [None] * self.num_layers
        self.width: list[int] = [0] * self.num_layers
        self._prompt: tuple[torch.Tensor, torch.Tensor] = (torch.zeros(0, 0, dtype=torch.bool),) * 2
        self.tokens_per_layer: list[int] = []  # cache entries per layer after the last compression (prompt part)

    def install(self) -> list[RemovableHandle]:
        """Register the hooks (after the in-LLM stage's, whose prefill state they read); returns their handles."""
        dec = self.adapter.decoder
        handles = [
            dec.register_forward_pre_hook(self._decoder_pre, with_kwargs=True),
            dec.register_forward_hook(self._decoder_post),
        ]
        for i, layer in enumerate(self.adapter.decoder_layers()):
            handles.append(layer.register_forward_pre_hook(functools.partial(self._layer_pre, i), with_kwargs=True))
        return handles

    def tag_attention(self) -> list[tuple[torch.nn.Module, int]]:
        """The attention modules whose calls ``observe`` reads (tagged by the handle)."""
        return list(self.adapter.attention_modules()) if self.compressor.observes else []

    # --------------------------------------------------------------------------------------- prefill

    def _decoder_pre(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        call = hf.CallArgs(args, kwargs)
        past = call.cache_length()
        emb = call.inputs_embeds
        width = int(emb.shape[1]) if emb is not None else int(call.input_ids.shape[1])
        if past == 0:
            self.prefill, self.active = emb is not None, False
            self.importance, self.local = {}, [None] * self.num_layers
            st = self.state  # the in-LLM stage's decoder hook (installed first) has begun the prefill
            self._prompt = (st.cur_pad.clone(), st.cur_visual.clone())  # (B, N) real and visual tokens
            self._guard_window(width)
            return
        self.prefill = False
        if self.active:
            if width != 1:
                raise UnsupportedModeError(
                    f"a {width}-token step on a KV-compressed cache (chunked prefill, assisted decoding or continuing "
                    "a conversation) is not supported: its layers hold different entries. Use generate() per prompt"
                )
            self._guard_window(past + width)

    def _guard_window(self, total: int) -> None:
        if self.windows and total > min(self.windows) - 1:
            raise UnsupportedModeError(
                f"the sequence ({total} tokens) exceeds the sliding window ({min(self.windows)}) of some decoder "
                "layers, which would evict by physical position in a compressed cache; use a shorter sequence"
            )

    def _real(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and visual masks of layer ``layer``'s prefill entries (gathered where the in-LLM stage pruned)."""
        st = self.state
        keep = st.layer_keep[layer]
        pad, visual = self._prompt
        if keep is None:
            return pad, visual
        return pad.gather(1, keep), visual.gather(1, keep)

    def observe(self, layer: int, query: torch.Tensor, key: torch.Tensor, kwargs: dict[str, Any], module: Any) -> None:
        """Called by the attention function at every layer of a prefill: keep the compressor's importance only."""
        if not self.prefill or query.shape[2] != key.shape[2]:
            return
        real, _ = self._real(layer)
        if real.shape[1] != key.shape[2]:
            return
        scaling = hf.attention_scaling(module, kwargs, query.shape[-1])
        self.importance[layer] = self.compressor.observe(layer, query.detach(), key.detach(), scaling, real)

    def _decoder_post(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        if not self.prefill:
            return
        self.prefill = False
        cache = hf.output_cache(output)
        if cache is None:
            return
        if not hf.is_dynamic_cache(cache):
            raise UnsupportedModeError(
                f"KV compression needs a DynamicCache, got {type(cache).__name__}; use the default cache"
            )
        evicted = [self._compress_layer(cache, i) for i in range(self.num_layers)]
        self.tokens_per_layer = [hf.cache_layer_length(x) for x in hf.cache_layers(cache)]
        if any(evicted):
            hf.pin_kv_lengths(cache, evicted)
            self.active = True

    def _compress_layer(self, cache: Any, i: int) -> int:
        """Select layer ``i``'s kept entries; returns how many it evicted."""
        real, visual = self._real(i)
        n = int(real.shape[1])
        ctx = KVContext(i, self.num_layers, self.importance.pop(i, None), real, visual)
        index = self.compressor.keep(ctx)
        self.width[i] = n
        if index is None or index.shape[1] == n:
            self.local[i] = None
            return 0
        if index.dim() != 2 or index.shape[0] != real.shape[0] or index.shape[1] > n:
            raise PluginOutputError(
                f"kv-compressor '{self.compressor.name}' returned indices of shape {tuple(index.shape)} for layer {i}; "
                f"expected (batch, K) with K <= {n}"
            )
        index = index.long().to(real.device)
        if bool((index[:, 1:] <= index[:, :-1]).any()) or int(index.min()) < 0 or int(index.max()) >= n:
            raise PluginOutputError(
                f"kv-compressor '{self.compressor.name}' returned indices for layer {i} that are not strictly "
                f"ascending within [0, {n})"
            )
        hf.select_cache_entries(cache, i, index)
        self.local[i] = index
        return n - int(index.shape[1])

    # --------------------------------------------------------------------------------------- decode

    def _layer_pre(self, i: int, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        local = self.local[i]
        if self.prefill or not self.active or local is None:
            return None
        call = hf.CallArgs(args, kwargs)
        mask = call.attention_mask
        if torch.is_tensor(mask) and mask.dim() in (2, 4):
            gen = torch.arange(self.width[i], mask.shape[-1], device=local.device).expand(local.shape[0], -1)
            call.attention_mask = gather_seq(mask, torch.cat([local, gen], dim=1), -1, -mask.dim())
        return call.result()
