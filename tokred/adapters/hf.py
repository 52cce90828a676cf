"""The transformers seam: every transformers name tokred reads or writes at run time, in one place.

Pipeline stages never name a transformers keyword, cache class, registry, output field or generation option; they
ask this module. Each version difference lives here once, with a comment naming the version, so a rename in
transformers costs one line here. Importing this module does not import transformers (the version comes from the
installed distribution's metadata); the functions import what they need when called.

Version differences handled here (the tested range is ``TESTED_RANGE``, from `tokred._compat`):

* **5.24** renamed the KV-cache keyword ``past_key_values`` to ``cache`` in every decoder, decoder layer and
  attention call (``@deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")``) and the model-output field
  alike. [`CallArgs.cache`][tokred.adapters.hf.CallArgs] reads either name (the old one is still what a caller may
  pass while transformers keeps the alias); [`output_cache`][tokred.adapters.hf.output_cache] reads either field.
* **5.24** dropped ``DynamicLayer.dtype`` (tokred never read it) and made ``StaticLayer`` croppable (static caches
  stay refused: their layers share one length).

Everything else tokred relies on (``mm_encoder_outputs`` on the base model's forward, ``get_image_features``
returning ``pooler_output``, ``AttentionInterface`` / ``AttentionMaskInterface``, ``position_embeddings`` as a
(cos, sin) tuple handed to every decoder layer, ``DynamicCache.layers``) is the same from 5.18 to 5.24.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# The tested range and the version check live in tokred._compat (importable without torch); the seam re-exports them.
from tokred._compat import (  # noqa: F401
    TESTED_RANGE,
    UntestedTransformersWarning,
    at_least,
    check_version,
    installed_version,
    version_in_range,
)

#: Attribute names of a decoder's final norm (the one applied before the LM head), most common first: LFM2 calls it
#: ``embedding_norm``; GPT-style decoders ``ln_f`` / ``final_layernorm``.
FINAL_NORM_NAMES: tuple[str, ...] = ("norm", "final_norm", "final_layernorm", "ln_f", "embedding_norm")

# ----------------------------------------------------------------------------------------------------------------
# Keywords of hooked calls
# ----------------------------------------------------------------------------------------------------------------

#: The KV-cache keyword, newest name first. 5.24 renamed ``past_key_values`` to ``cache`` (the old name is a
#: deprecated alias until 5.40): read both, write the one the installed version uses.
CACHE_NAMES: tuple[str, ...] = ("cache", "past_key_values")
CACHE_KWARG: str = "cache" if at_least("5.24") else "past_key_values"

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
#: Per-token side inputs some families take beside ``input_ids`` (Gemma3/PaliGemma: token_type_ids; Qwen-VL:
#: mm_token_type_ids); a pre-LLM reduction shortens them with the ids.
TOKEN_TYPE_INPUTS: tuple[str, ...] = ("token_type_ids", "mm_token_type_ids")
#: Precomputed encoder outputs accepted by every 5.18+ multimodal base model
#: (``{"image": BaseModelOutputWithPooling}``).
MM_ENCODER_OUTPUTS = "mm_encoder_outputs"
_MM_IMAGE = "image"
#: Video inputs (LLaVA-OneVision, LLaVA-NeXT-Video, Qwen2/2.5/3-VL): raw frames, the Qwen grid (t, h, w) per video,
#: and the key of their precomputed encoder outputs in ``mm_encoder_outputs`` (the same in 5.18 and 5.24).
VIDEO_PIXELS = "pixel_values_videos"
VIDEO_GRID = "video_grid_thw"
_MM_VIDEO = "video"


class _Kw:
    """A keyword of a hooked forward call, readable and writable as an attribute of ``CallArgs``."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def __get__(self, obj: CallArgs, owner: type) -> Any:
        for name in self.names:
            if obj.kwargs.get(name) is not None:
                return obj.kwargs[name]
        return None

    def __set__(self, obj: CallArgs, value: Any) -> None:
        present = [n for n in self.names if n in obj.kwargs]
        obj.kwargs[present[0] if present else self.names[0]] = value


class CallArgs:
    """The ``(args, kwargs)`` of a hooked transformers forward, with its keywords as attributes.

    Decoders, decoder layers and base models all receive these by keyword in transformers 5.x (the hidden states of a
    decoder layer may come positionally). Reading an attribute returns ``None`` when the call did not pass it;
    setting one writes the name the call used (or the current name).

    Args:
        args: Positional arguments of the call.
        kwargs: Keyword arguments of the call (modified in place by attribute writes).
    """

    cache = _Kw(CACHE_KWARG, *(n for n in CACHE_NAMES if n != CACHE_KWARG))
    inputs_embeds = _Kw("inputs_embeds")
    input_ids = _Kw(INPUT_IDS)
    attention_mask = _Kw(ATTENTION_MASK)
    position_ids = _Kw(POSITION_IDS)
    position_embeddings = _Kw("position_embeddings")  # (cos, sin), each (B, N, D) or (3, B, N, D) before folding
    # DeepStack (Qwen3-VL, 5.18+): the decoder adds deepstack_visual_embeds[i] (V, C) to the hidden states at the
    # visual_pos_masks (B, N) positions after decoder layer i.
    visual_pos_masks = _Kw("visual_pos_masks")
    deepstack_embeds = _Kw("deepstack_visual_embeds")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs

    @property
    def hidden_states(self) -> torch.Tensor:
        """The hidden states of a decoder-layer call, shape (B, N, C)."""
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    @hidden_states.setter
    def hidden_states(self, value: torch.Tensor) -> None:
        if self.args:
            self.args = (value, *self.args[1:])
        else:
            self.kwargs["hidden_states"] = value

    def cache_length(self) -> int:
        """Tokens already in the call's KV cache (0 without a cache: a prefill)."""
        cache = self.cache
        return int(cache.get_seq_length()) if cache is not None else 0

    def result(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """What a ``with_kwargs`` forward pre-hook returns to apply the changes."""
        return self.args, self.kwargs

    # ------------------------------------------------------------------------------------ encoder outputs

    def image_outputs(self) -> Any:
        """Precomputed image-encoder outputs passed as ``mm_encoder_outputs``, or ``None``."""
        mm = self.kwargs.get(MM_ENCODER_OUTPUTS)
        return mm.get(_MM_IMAGE) if isinstance(mm, dict) else None

    def set_image_outputs(self, outputs: Any) -> None:
        """Pass ``outputs`` (a ``get_image_features`` result) as the call's precomputed image-encoder outputs."""
        mm = dict(self.kwargs.get(MM_ENCODER_OUTPUTS) or {})
        mm[_MM_IMAGE] = outputs
        self.kwargs[MM_ENCODER_OUTPUTS] = mm

    def video_outputs(self) -> Any:
        """Precomputed video-encoder outputs passed in ``mm_encoder_outputs``, or ``None``."""
        mm = self.kwargs.get(MM_ENCODER_OUTPUTS)
        return mm.get(_MM_VIDEO) if isinstance(mm, dict) else None

    def set_video_outputs(self, outputs: Any) -> None:
        """Pass ``outputs`` (a ``get_video_features`` result) as the call's precomputed video-encoder outputs."""
        mm = dict(self.kwargs.get(MM_ENCODER_OUTPUTS) or {})
        mm[_MM_VIDEO] = outputs
        self.kwargs[MM_ENCODER_OUTPUTS] = mm

    def has_video_pixels(self) -> bool:
        """Whether the call carries raw video frames."""
        return self.kwargs.get(VIDEO_PIXELS) is not None

    def pixel_inputs(self) -> list[str]:
        """Keywords of raw image inputs in the call (``pixel_values`` and family variants)."""
        return [k for k in self.kwargs if k.startswith("pixel_values")]

    def has_pixels(self) -> bool:
        """Whether the call carries raw image inputs."""
        return self.kwargs.get("pixel_values") is not None


def bind_positional(forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``args`` bound to ``forward``'s parameter names (some families call their base model
    positionally)."""
    if not args:
        return kwargs
    names = list(inspect.signature(forward).parameters)
    return {**kwargs, **dict(zip(names, args))}


def accepts_mm_encoder_outputs(model: Any) -> bool:
    """Whether ``model.forward`` takes precomputed encoder outputs (transformers >= 5.18 multimodal models)."""
    return MM_ENCODER_OUTPUTS in inspect.signature(model.forward).parameters


def injects_visual_features(decoder: Any) -> bool:
    """Whether a decoder adds visual features to its hidden states after some layers (DeepStack-style)."""
    params = inspect.signature(decoder.forward).parameters
    return "deepstack_visual_embeds" in params and "visual_pos_masks" in params


def accepts_token_types(model: Any) -> bool:
    """Whether ``model.forward`` takes ``token_type_ids`` (Gemma3 / PaliGemma: bidirectional image spans)."""
    return "token_type_ids" in inspect.signature(model.forward).parameters


# ----------------------------------------------------------------------------------------------------------------
# Image features
# ----------------------------------------------------------------------------------------------------------------


def encoder_kwargs(base: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The forward kwargs that ``base.get_image_features`` takes (as ``generate()`` selects them)."""
    params = inspect.signature(base.get_image_features).parameters
    return {k: kwargs[k] for k in params if k != "kwargs" and k in kwargs and kwargs[k] is not None}


def video_encoder_kwargs(base: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The forward kwargs that ``base.get_video_features`` takes (empty when the model has no video path)."""
    fn = getattr(base, "get_video_features", None)
    if not callable(fn) or kwargs.get(VIDEO_PIXELS) is None:
        return {}
    params = inspect.signature(fn).parameters
    return {k: kwargs[k] for k in params if k != "kwargs" and k in kwargs and kwargs[k] is not None}


def video_features(base: Any, enc: dict[str, Any]) -> Any:
    """Run the stock ``get_video_features``; its ``pooler_output`` holds the projected features of each video: a
    tensor (n_video, n, C) (LLaVA-OneVision: the frames' pooled tokens then one newline row; LLaVA-NeXT-Video 5.24),
    or a tuple of per-video tensors ((n, C) for Qwen-VL, (frames, n_frame, C) for LLaVA-NeXT-Video 5.18)."""
    return base.get_video_features(**enc, return_dict=True)


def image_features(base: Any, enc: dict[str, Any]) -> Any:
    """Run the stock ``get_image_features`` (a ``BaseModelOutputWithPooling``; the projected features of each image
    are its ``pooler_output``)."""
    return base.get_image_features(**enc, return_dict=True)


def pooled(outputs: Any) -> Any:
    """The projected per-image features of a ``get_image_features`` result: a tensor (n_img, n, C), (n, C), or a
    list/tuple of per-image tensors."""
    return outputs.pooler_output


def set_pooled(outputs: Any, features: Any) -> None:
    """Replace the projected features of a ``get_image_features`` result."""
    outputs.pooler_output = features


def injected_features(outputs: Any) -> list[Any] | None:
    """The features a DeepStack encoder output adds inside the LLM: one entry per injection layer, each a tuple of
    per-image (n_i, C) tensors with the rows of ``pooled(outputs)`` (``None`` for other models)."""
    feats = getattr(outputs, "deepstack_features", None)
    return list(feats) if feats else None


def set_injected_features(outputs: Any, features: list[Any]) -> None:
    """Replace the DeepStack features of an encoder output."""
    outputs.deepstack_features = features


def rope_index(base: Any, kwargs: dict[str, Any]) -> torch.Tensor:
    """The model's own multi-axis (M-RoPE) positions of a full prompt, shape (3, B, N).

    Calls ``base.get_rope_index`` with the arguments its signature names, taken from ``kwargs`` (the forward and
    image-encoder inputs); families without ``mm_token_type_ids`` in the call get it from the placeholder ids.
    """
    params = inspect.signature(base.get_rope_index).parameters
    args = {k: kwargs[k] for k in params if k not in ("self", "kwargs") and kwargs.get(k) is not None}
    pos, _ = base.get_rope_index(**args)
    return pos


def has_rope_index(base: Any) -> bool:
    """Whether the base model computes its own M-RoPE positions (``get_rope_index``)."""
    return callable(getattr(base, "get_rope_index", None))


# ----------------------------------------------------------------------------------------------------------------
# KV cache
# ----------------------------------------------------------------------------------------------------------------


def is_dynamic_cache(cache: Any) -> bool:
    """Whether ``cache`` is the default ``DynamicCache`` with only ``DynamicLayer`` layers (per-layer lengths)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return isinstance(cache, DynamicCache) and all(isinstance(x, DynamicLayer) for x in cache.layers)


#: ``layer_types`` of hybrid-decoder layers whose cache is one state per sequence (the last convolution inputs and,
#: for linear attention, a recurrent state), read from the layer's own input: after a pruned prefill a later layer's
#: state is that of the kept sequence, whose last tokens (text, never dropped) are what decode reads. Qwen3.5's
#: GatedDeltaNet and LFM2's short convolution (``LinearAttentionLayer``, transformers 5.18 .. 5.24).
STATE_LAYER_TYPES: tuple[str, ...] = ("linear_attention", "conv")


def is_prunable_cache(cache: Any) -> bool:
    """Whether in-LLM pruning can shorten ``cache`` layer by layer: a ``DynamicCache`` whose layers are
    ``DynamicLayer`` (per-layer lengths) or per-sequence linear-attention / convolution states
    (``LinearAttentionLayer``, which hold no per-token entries)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer, LinearAttentionCacheLayerMixin

    return isinstance(cache, DynamicCache) and all(
        isinstance(x, (DynamicLayer, LinearAttentionCacheLayerMixin)) for x in cache.layers
    )


def pin_mask_sizes(cache: Any, anchor: int = 0) -> None:
    """Size every layer's attention mask (and query offset) from layer ``anchor``'s cache, on this cache object.

    transformers sizes the masks of all full-attention layers from the *first full-attention layer's* cache and the
    sliding ones from the first sliding layer's (``masking_utils.find_first_full_attention_index``,
    ``Cache.get_mask_sizes`` / ``get_query_offset``). When that layer was pruned its cache is shorter than the
    sequence, and the masks (which tokred gathers per layer in original coordinates) would come out too short.
    Layer ``anchor`` (0, never pruned) holds every token; while the sequence fits every sliding window (tokred
    refuses otherwise) its sizes are those of any layer of the unpruned model. Idempotent.
    """
    if getattr(cache, "_tokred_pinned", False):
        return
    cls = type(cache)

    def get_mask_sizes(query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return cls.get_mask_sizes(cache, query_length, anchor)

    def get_query_offset(layer_idx: int = 0) -> int:
        return cls.get_query_offset(cache, anchor)

    cache.get_mask_sizes, cache.get_query_offset, cache._tokred_pinned = get_mask_sizes, get_query_offset, True


def select_cache_entries(cache: Any, layer: int, index: torch.Tensor) -> None:
    """Keep only the entries ``index`` (B, K) of one ``DynamicLayer``'s keys and values (sequence dim -2), in place."""
    entry = cache.layers[layer]
    for name in ("keys", "values"):
        t = getattr(entry, name)  # (B, H_kv, N, D)
        gather = index[:, None, :, None].expand(t.shape[0], t.shape[1], index.shape[1], t.shape[3]).to(t.device)
        setattr(entry, name, t.gather(2, gather).contiguous())


def pin_kv_lengths(cache: Any, evicted: list[int]) -> None:
    """Make a cache whose layers lost ``evicted[i]`` prompt entries after the prefill report original lengths.

    ``get_seq_length`` (which generation and the decoder use for the next positions) adds back each layer's evicted
    count, and the mask sizes and query offset come from layer 0 plus its evicted count: the mask of a decode step is
    built over the original sequence (tokred then gathers each layer's columns). Replaces ``pin_mask_sizes``.
    """
    cls = type(cache)

    def get_seq_length(layer_idx: int = 0) -> int:
        return int(cls.get_seq_length(cache, layer_idx)) + (evicted[layer_idx] if layer_idx < len(evicted) else 0)

    def get_mask_sizes(query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        kv_length, offset = cls.get_mask_sizes(cache, query_length, 0)
        return int(kv_length) + evicted[0], offset

    def get_query_offset(layer_idx: int = 0) -> int:
        return int(cls.get_seq_length(cache, 0)) + evicted[0]  # the class's own offset would call the pinned length

    cache.get_seq_length, cache.get_mask_sizes = get_seq_length, get_mask_sizes
    cache.get_query_offset, cache._tokred_pinned = get_query_offset, True


def output_cache(outputs: Any) -> Any:
    """The KV cache of a model output (5.24 renamed the field ``past_key_values`` to ``cache``)."""
    for name in CACHE_NAMES:
        if isinstance(outputs, dict) and outputs.get(name) is not None:
            return outputs[name]
    return None


#: Tensor attributes of a cache layer that hold keys and values (quantized layers keep their storage apart).
KV_ATTRIBUTES = ("keys", "values", "_quantized_keys", "_quantized_values")


def cache_layers(cache: Any) -> list[Any]:
    """The per-layer entries of a cache: ``Cache.layers`` objects, or ``(keys, values, ...)`` legacy tuples.

    Raises:
        TypeError: If ``cache`` is neither a transformers cache nor a tuple of per-layer tuples.
    """
    if cache is None:
        return []
    if hasattr(cache, "self_attention_cache"):  # EncoderDecoderCache
        return cache_layers(cache.self_attention_cache) + cache_layers(cache.cross_attention_cache)
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return list(layers)
    if isinstance(cache, (tuple, list)):
        return list(cache)
    raise TypeError(
        f"cannot read a KV cache from {type(cache).__name__}: expected a transformers Cache (with .layers) "
        "or a tuple of per-layer (keys, values) tuples"
    )


def cache_layer_tensors(layer: Any) -> list[Any]:
    """The key/value storage of one cache entry (tensors, tuples of tensors, or ``None``)."""
    if layer is None:
        return []
    if isinstance(layer, (tuple, list)):
        return list(layer[:2])
    return [getattr(layer, name, None) for name in KV_ATTRIBUTES]


def cache_layer_length(layer: Any) -> int:
    """Tokens stored in one cache entry (a static layer counts only its filled part)."""
    if layer is None:
        return 0
    keys = (layer[0] if layer else None) if isinstance(layer, (tuple, list)) else getattr(layer, "keys", None)
    shape = getattr(keys, "shape", None)
    stored = int(shape[-2]) if shape is not None and len(shape) >= 2 else 0
    if hasattr(layer, "_quantized_keys"):  # keys hold only the full-precision residual
        return int(layer.get_seq_length())
    if hasattr(layer, "max_cache_len"):  # pre-allocated buffer: only the filled part counts
        return min(stored, int(layer.get_seq_length()))
    return stored


# ----------------------------------------------------------------------------------------------------------------
# Attention functions
# ----------------------------------------------------------------------------------------------------------------


def text_attn_implementation(text_config: Any) -> str:
    """The attention implementation the language model runs (``"sdpa"``, ``"eager"``, a registered name, ...)."""
    return str(text_config._attn_implementation)


def set_text_attn_implementation(model: Any, name: str) -> None:
    """Switch only the language model's attention implementation (the vision tower keeps its own)."""
    model.set_attn_implementation({"text_config": name})


def register_attention(name: str, function: Callable[..., Any], like: str) -> None:
    """Register ``function`` as attention implementation ``name``, with the stock mask function of ``like``.

    Without the paired mask function, ``masking_utils`` silently builds no padding mask for an unknown name.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    mask: Any = {"sdpa": sdpa_mask, "eager": eager_mask}[like]
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, mask)


def sdpa_attention(*args: Any, **kwargs: Any) -> Any:
    """transformers' stock SDPA attention function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(*args, **kwargs)


def eager_attention(module: torch.nn.Module) -> Callable[..., Any]:
    """The eager attention function of ``module``'s own modeling file (Llama's when the file defines none)."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    return getattr(sys.modules[type(module).__module__], "eager_attention_forward", eager_attention_forward)


def attention_scaling(module: torch.nn.Module, kwargs: dict[str, Any], head_dim: int) -> float:
    """The softmax scale an attention module passed to its attention function."""
    scaling = kwargs.get("scaling")
    if scaling is None:
        scaling = getattr(module, "scaling", head_dim**-0.5)
    return float(scaling)


def layer_attention(layer: torch.nn.Module) -> torch.nn.Module:
    """The self-attention module of a decoder layer."""
    attn = layer.get_submodule("self_attn")
    return attn


#: Names, in order of preference, of the module whose output a decoder layer adds to the residual after its MLP:
#: the post-feedforward norm where the family has one (Gemma 2/3/4: the MLP output is normed before the add), else
#: the MLP itself (Llama, Qwen2, Mistral, ...).
MLP_OUTPUT_NAMES = ("post_feedforward_layernorm", "mlp")


def layer_mlp_output(layer: torch.nn.Module) -> torch.nn.Module | None:
    """The module of a decoder layer whose output is the MLP branch added to the residual (a router weight scales
    it), or ``None`` when the layer has none of ``MLP_OUTPUT_NAMES``."""
    for name in MLP_OUTPUT_NAMES:
        module = getattr(layer, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


#: Name of the norm a decoder layer applies to its input before self-attention (every 5.x pre-norm decoder).
INPUT_NORM = "input_layernorm"


def layer_input_norm(layer: torch.nn.Module) -> torch.nn.Module | None:
    """The norm a decoder layer applies to its input before self-attention, or ``None`` if it has none by name."""
    norm = getattr(layer, INPUT_NORM, None)
    return norm if isinstance(norm, torch.nn.Module) else None


def call_self_attention(attn: torch.nn.Module, hidden: torch.Tensor, layer_kwargs: dict[str, Any]) -> Any:
    """Call a decoder layer's self-attention module as the layer does: on ``hidden`` (already input-normed) with the
    layer call's keywords (position embeddings, mask, position ids), without a cache."""
    kwargs = {k: v for k, v in layer_kwargs.items() if k not in (*CACHE_NAMES, "hidden_states", "use_cache")}
    return attn(hidden_states=hidden, **kwargs)


def rotary_embeddings(decoder: Any, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str | None) -> Any:
    """The decoder's RoPE ``(cos, sin)`` for ``position_ids`` (B, K), as its forward computes them for the layers;
    families with per-layer-type rotary tables (Gemma3: ``rotary_emb(x, position_ids, layer_type)``) get the type."""
    rope = decoder.rotary_emb
    if layer_type is not None and "layer_type" in inspect.signature(rope.forward).parameters:
        return rope(x, position_ids, layer_type)
    return rope(x, position_ids)


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------

#: ``generate()`` kwargs that switch on assisted / speculative decoding.
ASSISTED_KWARGS = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit", "draft_model")
#: ``cache_implementation`` values whose layers cannot hold per-layer lengths.
STATIC_CACHES = ("static", "offloaded_static", "hybrid", "hybrid_chunked", "sliding_window", "mamba", "quantized")


@dataclass(frozen=True)
class GenerationModes:
    """The modes of a ``generate()`` call that token reduction cannot run under.

    Attributes:
        assisted: Assisted / speculative decoding was asked for.
        chunked_prefill: The prompt would be prefilled in chunks.
        static_cache: The ``cache_implementation`` asked for when its layers share one length, else ``None``.
    """

    assisted: bool
    chunked_prefill: bool
    static_cache: str | None


def generation_modes(model: Any, kwargs: dict[str, Any]) -> GenerationModes:
    """What a ``generate()`` call (its kwargs and the model's generation config) asks for."""
    cfg = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    impl = kwargs.get("cache_implementation") or getattr(cfg, "cache_implementation", None)
    return GenerationModes(
        assisted=any(kwargs.get(k) is not None for k in ASSISTED_KWARGS),
        chunked_prefill=bool(getattr(cfg, "prefill_chunk_size", None) or kwargs.get("prefill_chunk_size")),
        static_cache=impl if impl in STATIC_CACHES else None,
    )


def generate_prompt_ids(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``generate()``'s arguments with the prompt moved to ``input_ids`` (it may come positionally or as
    ``inputs``)."""
    if args and torch.is_tensor(args[0]) and INPUT_IDS not in kwargs:
        kwargs[INPUT_IDS], args = args[0], args[1:]
    if "inputs" in kwargs and INPUT_IDS not in kwargs:
        kwargs[INPUT_IDS] = kwargs.pop("inputs")
    return args, kwargs


def generated_sequences(out: Any) -> torch.Tensor | None:
    """The token ids of a ``generate()`` result (a tensor, or an output with ``sequences``)."""
    return out if torch.is_tensor(out) else getattr(out, "sequences", None)


def with_sequences(out: Any, sequences: torch.Tensor) -> Any:
    """A ``generate()`` result with its token ids replaced."""
    if torch.is_tensor(out):
        return sequences
    out.sequences = sequences
    return out


# ----------------------------------------------------------------------------------------------------------------
# Vision towers (ToMe)
# ----------------------------------------------------------------------------------------------------------------

#: (norm1, attention, layer_scale1, norm2, mlp, layer_scale2, has class token) per encoder layer class.
VISION_LAYOUTS: dict[str, tuple[str, str, str | None, str, str, str | None, bool]] = {
    "CLIPEncoderLayer": ("layer_norm1", "self_attn", None, "layer_norm2", "mlp", None, True),
    "SiglipEncoderLayer": ("layer_norm1", "self_attn", None, "layer_norm2", "mlp", None, False),
    "Dinov2Layer": ("norm1", "attention", "layer_scale1", "norm2", "mlp", "layer_scale2", True),
}


def vision_encoder_layers(tower: Any) -> torch.nn.ModuleList | None:
    """The encoder layers of a CLIP / SigLIP / DINOv2 vision tower, or ``None``."""
    for path in ("vision_model.encoder.layers", "encoder.layers", "encoder.layer"):
        obj = tower
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    return None


def vision_attention(attn: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None, kwargs: dict[str, Any]) -> Any:
    """Call a vision encoder's attention module on ``x`` with an additive bias as its mask; returns its output."""
    out, _ = attn(x, attention_mask=bias, **kwargs)
    return out


#: Names of the key projection of vision attention modules (``k_proj`` in 5.x CLIP/SigLIP/DINOv2; ``key`` in
#: older DINOv2 code that remote-code models may still carry).
VISION_KEY_PROJECTIONS: tuple[str, ...] = ("k_proj", "key")


def vision_key_module(attn: torch.nn.Module) -> torch.nn.Module:
    """The key projection of a vision encoder layer's attention module."""
    for name in VISION_KEY_PROJECTIONS:
        module = getattr(attn, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise AttributeError(f"{type(attn).__name__} has no key projection ({', '.join(VISION_KEY_PROJECTIONS)})")


def attention_heads(attn: torch.nn.Module) -> int:
    """Number of heads of an attention module."""
    return int(getattr(attn, "num_heads", 0) or getattr(attn, "num_attention_heads", 1))


# ----------------------------------------------------------------------------------------------------------------
# Vision towers: class-token attention for pre-LLM mergers (VTC-CLS, VisionZip, VisPruner)
# ----------------------------------------------------------------------------------------------------------------

#: Names of the query projection of vision attention modules (``q_proj`` in 5.x; ``query`` in older DINOv2 code).
VISION_QUERY_PROJECTIONS: tuple[str, ...] = ("q_proj", "query")
#: LLaVA's projector and the config fields that say which tower hidden states it reads.
PROJECTOR = "multi_modal_projector"
FEATURE_SELECT = "vision_feature_select_strategy"


def vision_query_module(attn: torch.nn.Module) -> torch.nn.Module:
    """The query projection of a vision encoder layer's attention module."""
    for name in VISION_QUERY_PROJECTIONS:
        module = getattr(attn, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise AttributeError(f"{type(attn).__name__} has no query projection ({', '.join(VISION_QUERY_PROJECTIONS)})")


def vision_layer_attention(layer: torch.nn.Module) -> torch.nn.Module:
    """The self-attention module of a CLIP / SigLIP / DINOv2 encoder layer (`VISION_LAYOUTS`)."""
    return layer.get_submodule(VISION_LAYOUTS[type(layer).__name__][1])


def vision_has_class_token(layer: torch.nn.Module) -> bool:
    """Whether the tower of this encoder layer prepends a class token (CLIP, DINOv2; not SigLIP)."""
    return VISION_LAYOUTS[type(layer).__name__][6]


def vision_attention_scale(attn: torch.nn.Module, head_dim: int) -> float:
    """The softmax scale of a vision attention module (CLIP: ``scale``; DINOv2, SigLIP: ``scaling``)."""
    for name in ("scale", "scaling"):
        value = getattr(attn, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return float(head_dim**-0.5)


def tower_hidden_states(outputs: Any) -> tuple[torch.Tensor, ...] | None:
    """The vision tower's hidden states (embeddings, then every layer's output) kept in a ``get_image_features``
    result (LLaVA returns the tower's output with ``pooler_output`` replaced), or ``None``."""
    states = getattr(outputs, "hidden_states", None)
    return tuple(states) if states else None


def feature_select_strategy(config: Any) -> str | None:
    """LLaVA's ``vision_feature_select_strategy``: ``"default"`` drops the class token before the projector,
    ``"full"`` keeps it."""
    value = getattr(config, FEATURE_SELECT, None)
    return None if value is None else str(value)


def multimodal_projector(base: Any) -> torch.nn.Module | None:
    """LLaVA's projector from tower hidden states to LLM-input features, or ``None``."""
    module = getattr(base, PROJECTOR, None)
    return module if isinstance(module, torch.nn.Module) else None


# ----------------------------------------------------------------------------------------------------------------
# Building the reference model (internal transformers modules, not top-level exports)
# ----------------------------------------------------------------------------------------------------------------


def gguf_metadata(path: str) -> dict[str, Any]:
    """The config and tokenizer metadata of a GGUF file, without its tensors."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    return dict(load_gguf_checkpoint(path, return_tensors=False))


def pil_bit_image_processor(**options: Any) -> Any:
    """A PIL-backed BiT image processor (resize, centre crop, normalise), usable without torchvision."""
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    return BitImageProcessorPil(**options)
