"""The generic model adapter: one class for every model that follows the common transformers 5.x contract.

The contract (every transformers version in `tokred.adapters.hf.TESTED_RANGE`, checked structurally at patch time):
the model's base model has
``get_image_features`` returning a ``BaseModelOutputWithPooling`` whose ``pooler_output`` holds the projected features
of each image; the features fill the ``image_token_id`` placeholders of ``input_ids`` in order; ``forward`` accepts
``mm_encoder_outputs``; ``get_decoder()`` returns a standard decoder with ``layers`` (each with ``self_attn``), a
rotary embedding and 1-D positions folded into cos/sin before the layers. Family adapters
(`tokred.adapters.families`) override only what differs. Call keywords, caches, registries and output fields are
named in the transformers seam (`tokred.adapters.hf`), not here.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from tokred.adapters import hf
from tokred.errors import UnsupportedModelError

#: ``layer_types`` of attention layers whose cache is per-token keys and values that a layer builds from the tokens it
#: sees (so a pruned layer holds its kept tokens), with the config field of the window that cache may evict by
#: physical position (tokred refuses sequences that reach it, as for sliding windows). Reference sliding attention
#: (Unlimited-OCR's R-SWA) keeps every prefill token and a window of decoded ones: within the window it is causal
#: attention, and its mask is sized from the first such layer (layer 0, never pruned).
KV_LAYER_TYPES: dict[str, str | None] = {
    "full_attention": None,
    "sliding_attention": "sliding_window",
    "reference_sliding_attention": "sliding_window",
}
#: Why in-LLM pruning is refused on a layer kind whose cache is more than per-token keys and values.
_LAYER_KIND_REASONS = {
    "indexed_attention": (
        "its DeepSeek-sparse-attention lightning indexer keeps a key cache of its own and picks each query's top-k "
        "keys from it, which tokred does not reduce with the kept tokens"
    ),
}


@dataclass(frozen=True)
class LayerPlan:
    """The decoder layers an in-LLM schedule touches (checked against hybrid decoders at patch time).

    Attributes:
        pruning: Layers whose input is reduced.
        scoring: Layers whose attention the scorer reads (empty for a scorer that reads none).
        routes: Whether a router lets tokens skip layers (token routing).
    """

    pruning: tuple[int, ...] = ()
    scoring: tuple[int, ...] = ()
    routes: bool = False


@dataclass(frozen=True)
class VideoLayout:
    """The frame structure of one video's features.

    Attributes:
        frames: Frames (temporal groups) of the video as the LLM sees them.
        per_frame: Feature rows of each frame.
        grid: (rows, cols) of one frame's rows when they form a grid, else ``None``.
    """

    frames: int
    per_frame: int
    grid: tuple[int, int] | None


def _square(n: int) -> tuple[int, int] | None:
    side = int(round(n**0.5))
    return (side, side) if side * side == n else None


def _config_get(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


class ModelAdapter:
    """Generic adapter; subclasses override what their family does differently.

    Args:
        model: A transformers ``...ForConditionalGeneration`` (or base) model.

    Raises:
        UnsupportedModelError: If the model breaks the generic contract (the message says which part).
    """

    name: ClassVar[str] = "generic"
    families: ClassVar[str] = "LLaVA-1.5, InternVL, Idefics3, SmolVLM and other models following the generic contract"
    #: Model types known to work through this adapter (for messages and docs; matching is structural).
    model_types: ClassVar[tuple[str, ...]] = ("llava", "internvl", "idefics3", "smolvlm")
    #: True when the family adapter handles bidirectional attention inside image spans (materialised masks).
    handles_bidirectional: ClassVar[bool] = False
    #: True when the prompt's text tokens attend bidirectionally too (a prefix-LM: PaliGemma), so the causal
    #: attention rows scorers compute (`tokred.ops.attention.attention_rows`) are exact for the last prompt token only.
    bidirectional_prompt: ClassVar[bool] = False
    #: True when some placeholder rows are structural (``text_like_rows``), so features must be inspected.
    has_text_like_rows: ClassVar[bool] = False

    def __init__(self, model: Any) -> None:
        self.model = model
        self.base = self._base_model(model)
        self.decoder = self._find_decoder(model)
        self.config = model.config
        self.text_config = model.config.get_text_config()
        self.check_structure()

    # ----------------------------------------------------------------------------------------- matching

    @classmethod
    def matches(cls, model: Any) -> bool:
        """Whether this adapter should handle ``model`` (the generic one: the structural contract holds)."""
        base = cls._base_model(model)
        return (
            callable(getattr(base, "get_image_features", None))
            and callable(getattr(model, "get_decoder", None))
            and _config_get(model.config, "image_token_id", "image_token_index") is not None
        )

    @classmethod
    def contract_gap(cls, model: Any) -> str:
        """What keeps ``model`` from the generic contract, in words (for the error of an unsupported model)."""
        base = cls._base_model(model)
        if not callable(getattr(base, "get_image_features", None)):
            return (
                "it has no get_image_features: images do not enter as placeholder tokens of a decoder-only LLM "
                "(cross-attention, a Q-Former, an encoder-decoder or no vision input)"
            )
        if not callable(getattr(model, "get_decoder", None)):
            return "it has no get_decoder()"
        if _config_get(model.config, "image_token_id", "image_token_index") is None:
            return "its config names no image_token_id, so tokred cannot find the visual tokens in input_ids"
        return "no registered adapter matched it"

    @staticmethod
    def _find_decoder(model: Any) -> Any:
        """``model.get_decoder()``, unwrapped once when it returns a causal-LM wrapper around the decoder (Llama 4's
        ``language_model`` is a ``...ForCausalLM``)."""
        decoder = model.get_decoder()
        inner = getattr(decoder, "model", None)
        if not isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList) and isinstance(
            getattr(inner, "layers", None), torch.nn.ModuleList
        ):
            return inner
        return decoder

    @staticmethod
    def _base_model(model: Any) -> Any:
        base = getattr(model, "model", None)
        return base if base is not None and hasattr(base, "get_image_features") else model

    # ------------------------------------------------------------------------------------- structure

    def check_structure(self) -> None:
        """Raise ``UnsupportedModelError`` unless the generic contract holds."""
        problems = []
        layers = getattr(self.decoder, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
            problems.append("its decoder has no 'layers' ModuleList")
        else:  # hybrid decoders: layers typed as non-attention (layer_types) may lack self-attention
            odd = {i for i, _ in self.non_attention_layers()}
            missing = [i for i, layer in enumerate(layers) if not hasattr(layer, "self_attn") and i not in odd]
            if missing:  # hf.layer_attention
                problems.append(f"its decoder layers {missing} have no 'self_attn' module")
        if getattr(self.decoder, "rotary_emb", None) is None:
            problems.append("its decoder has no rotary embedding ('rotary_emb')")
        if not hf.accepts_mm_encoder_outputs(self.base):
            problems.append(
                f"its forward does not accept precomputed encoder outputs ('{hf.MM_ENCODER_OUTPUTS}'; transformers "
                f">= {hf.TESTED_RANGE[0]} is required)"
            )
        if problems:
            raise UnsupportedModelError(
                f"{type(self.model).__name__} does not follow the generic multimodal contract: {'; '.join(problems)}"
            )

    def refusals(
        self, *, pre_llm: bool, in_llm: bool, layers: LayerPlan | None = None, mode: str = "drop"
    ) -> list[str]:
        """Reasons why the requested stages cannot be applied correctly to this model (empty: all fine).

        ``layers`` (the decoder layers the in-LLM schedule prunes and scores) and ``mode`` let a hybrid decoder be
        checked against the schedule itself."""
        reasons = []
        lm_params = inspect.signature(self.decoder.forward).parameters
        if any("deepstack" in p or p == "visual_pos_masks" for p in lm_params) and not self.injects_features():
            reasons.append(
                "visual features are added inside the LLM at several layers (DeepStack-style) through inputs tokred "
                "does not recognise, so dropping or merging visual tokens would misalign them"
            )
        if in_llm:  # a pre-LLM reduction only shortens the sequence: every layer kind handles that
            reasons += self.hybrid_refusals(layers or LayerPlan(), mode)
        if (in_llm or pre_llm) and self.bidirectional_image_attention() and not self.handles_bidirectional:
            reasons.append("image tokens attend bidirectionally within their span and no family adapter handles it")
        if pre_llm and self.uses_mrope() and not self.recomputes_mrope:
            reasons.append(
                "it uses M-RoPE positions, which a pre-LLM reduction changes and no family adapter recomputes"
            )
        return reasons

    def hybrid_refusals(self, layers: LayerPlan, mode: str) -> list[str]:
        """Why in-LLM pruning with this schedule is unsafe on a hybrid decoder (empty: a plain decoder, or safe).

        Linear-attention and convolution layers (`hf.STATE_LAYER_TYPES`) keep one state per sequence: a layer after
        the pruning layer builds it from the kept tokens, exactly what a no-cache run on the kept tokens does, so
        decode stays consistent. What stays refused: other layer kinds, a scorer that reads attention at a layer that
        has none, mask mode (a masked token still enters a state), and pruning at or before the first attention
        layer (transformers reads the cache length, hence the next positions, from it)."""
        odd = self.non_attention_layers()
        if not odd:
            return []
        attn = self.attention_layers()
        other = [(i, t) for i, t in odd if t not in hf.STATE_LAYER_TYPES]
        if other:
            kinds_found = sorted({t for _, t in other})
            other_kinds = ", ".join(kinds_found)
            why = "; ".join(f"{k}: {_LAYER_KIND_REASONS[k]}" for k in kinds_found if k in _LAYER_KIND_REASONS)
            return [
                f"the decoder has {other_kinds} layers (at {[i for i, _ in other]}) whose cache is not the "
                "plain per-token KV cache in-LLM pruning shortens, so decode after a pruned prefill would not stay "
                f"consistent{f' ({why})' if why else ''}; plain attention layers: {attn}. Use a pre-LLM strategy "
                "(aim-merge, pooling, random layer=0) for this model"
            ]
        kinds = ", ".join(sorted({t for _, t in odd}))
        reasons: list[str] = []
        if layers.routes:
            reasons.append(
                f"token routing lets tokens skip layers, and tokred has not made the {kinds} layers' per-sequence "
                "state consistent for tokens that skip them; route a decoder of attention layers only"
            )
        bad = sorted(set(layers.scoring) - set(attn))
        if bad:
            reasons.append(
                f"the scorer reads attention at decoder layers {bad}, which are {kinds} layers without attention; "
                f"score at an attention layer instead ({attn}; a scorer of the previous layer prunes at layer K when "
                "K - 1 is one of them)"
            )
        if mode == "mask":
            reasons.append(
                f"mode='mask' hides pruned tokens as attention keys only, but the {kinds} layers at "
                f"{[i for i, _ in odd]} would still fold them into their per-sequence state; use mode='drop'"
            )
        first = attn[0] if attn else None
        if layers.pruning and (first is None or min(layers.pruning) <= first):
            reasons.append(
                f"transformers reads the cache length (the next positions) from the first attention layer ({first}), "
                f"which pruning at layer {min(layers.pruning)} would shorten; prune at a layer after it"
            )
        return reasons

    def attention_layers(self) -> list[int]:
        """Indices of the decoder layers that are attention layers with a per-token KV cache (`KV_LAYER_TYPES`)."""
        odd = dict(self.non_attention_layers())
        return [i for i in range(self.num_layers) if i not in odd]

    def injects_features(self) -> bool:
        """Whether the decoder adds visual features after some layers through DeepStack inputs that tokred reduces
        and gathers with the visual tokens (Qwen3-VL)."""
        return hf.injects_visual_features(self.decoder)

    def non_attention_layers(self) -> list[tuple[int, str]]:
        """``(index, kind)`` of every decoder layer that is not an attention layer with a per-token KV cache
        (`KV_LAYER_TYPES`)."""
        layer_types = list(getattr(self.text_config, "layer_types", None) or [])
        return [(i, t) for i, t in enumerate(layer_types) if t not in KV_LAYER_TYPES]

    @property
    def recomputes_mrope(self) -> bool:
        """Whether a pre-LLM reduction can give the shortened sequence the model's own M-RoPE positions: the base
        model computes them itself (``get_rope_index``), so the survivors keep their original ones."""
        return hf.has_rope_index(self.base)

    def uses_mrope(self) -> bool:
        """Whether the decoder uses multi-axis rotary positions (M-RoPE)."""
        rope = _config_get(self.text_config, "rope_parameters", "rope_scaling") or {}
        return (isinstance(rope, dict) and "mrope_section" in rope) or hasattr(self.base, "get_rope_index")

    def bidirectional_image_attention(self) -> bool:
        """Whether image tokens attend to each other bidirectionally (e.g. Gemma3, PaliGemma)."""
        if getattr(self.text_config, "use_bidirectional_attention", False):
            return True
        return hf.accepts_token_types(self.base)

    # ------------------------------------------------------------------------------------- tokens

    @property
    def image_token_id(self) -> int:
        """Placeholder id of image features in ``input_ids``."""
        return int(_config_get(self.config, "image_token_id", "image_token_index"))

    @property
    def video_token_id(self) -> int | None:
        """Placeholder id of video features, when the family has one."""
        value = _config_get(self.config, "video_token_id", "video_token_index")
        return None if value is None else int(value)

    def placeholder_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Image placeholders, shape (B, N) bool."""
        return input_ids == self.image_token_id

    def visual_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Reducible visual tokens (image and video placeholders), shape (B, N) bool."""
        mask = input_ids == self.image_token_id
        if self.video_token_id is not None:
            mask = mask | (input_ids == self.video_token_id)
        return mask

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return len(self.decoder.layers)

    def decoder_layers(self) -> torch.nn.ModuleList:
        """The decoder layers, in order."""
        return self.decoder.layers

    def attention_modules(self) -> list[tuple[int, torch.nn.Module]]:
        """``(layer index, self-attention module)`` of every decoder layer that has one, in order."""
        return [
            (i, hf.layer_attention(layer)) for i, layer in enumerate(self.decoder.layers) if hasattr(layer, "self_attn")
        ]

    @property
    def pad_token_id(self) -> int:
        """Token id used for the padding a pre-LLM reduction adds (0 when the config names none)."""
        return int(getattr(self.text_config, "pad_token_id", None) or 0)

    @property
    def model_type(self) -> str:
        """The config's ``model_type`` (``"llava"``, ``"qwen2_vl"``, ...)."""
        return str(getattr(self.config, "model_type", ""))

    def vision_tower(self) -> torch.nn.Module | None:
        """The vision encoder, or ``None`` if the base model has no ``vision_tower``."""
        return getattr(self.base, "vision_tower", None)

    def vision_feature_layers(self) -> list[int]:
        """The vision-tower layers whose hidden states the projector reads (several are concatenated)."""
        layer = getattr(self.config, "vision_feature_layer", -1)
        return [int(x) for x in layer] if isinstance(layer, (list, tuple)) else [int(layer)]

    def sliding_windows(self) -> list[int | None]:
        """Sliding window of every decoder layer (``None`` for full attention)."""
        window = getattr(self.text_config, "sliding_window", None)
        types = list(getattr(self.text_config, "layer_types", None) or [])
        if not types:
            return [window if window and getattr(self.text_config, "use_sliding_window", False) else None] * len(
                self.decoder.layers
            )
        fields = [KV_LAYER_TYPES.get(t) for t in types]
        return [getattr(self.text_config, f, None) if f else None for f in fields]

    # ------------------------------------------------------------------------------------- features

    def encoder_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The forward kwargs that ``get_image_features`` takes (as ``generate()`` selects them)."""
        return hf.encoder_kwargs(self.base, kwargs)

    def has_pixels(self, kwargs: dict[str, Any]) -> bool:
        """Whether the call carries raw image or video inputs."""
        call = hf.CallArgs((), kwargs)
        return call.has_pixels() or call.has_video_pixels()

    # ------------------------------------------------------------------------------------- video

    def video_placeholder_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Video placeholders, shape (B, N) bool (all ``False`` when the family has no video token)."""
        vid = self.video_token_id
        return input_ids == vid if vid is not None else torch.zeros_like(input_ids, dtype=torch.bool)

    def mm_token_types(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Modality of every token as the M-RoPE families number them: 0 text, 1 image, 2 video, shape (B, N)."""
        return self.placeholder_mask(input_ids).int() + 2 * self.video_placeholder_mask(input_ids).int()

    def video_layouts(self, enc_kwargs: dict[str, Any], counts: Sequence[int]) -> list[VideoLayout]:
        """How each video's features split into frames: ``frames`` x ``per_frame`` rows, frame-major, then
        ``n - frames * per_frame`` trailing rows (structural, never reduced); the generic rule reads the frame count
        from the (videos, frames, C, H, W) pixels and takes any remainder as trailing rows."""
        pixels = enc_kwargs.get(hf.VIDEO_PIXELS)
        if pixels is None or pixels.dim() != 5:
            raise UnsupportedModelError(
                f"{type(self.model).__name__}: tokred cannot tell the frames of its video features apart "
                "(no (videos, frames, C, H, W) pixel input and no family rule)"
            )
        frames = int(pixels.shape[1])
        return [VideoLayout(frames, n // frames, _square(n // frames)) for n in counts]

    def text_like_rows(self, features: torch.Tensor) -> torch.Tensor | None:
        """Rows of one image's features that are structural, not visual content (kept as text), shape (n,) bool."""
        return None

    def feature_grids(self, enc_kwargs: dict[str, Any], counts: Sequence[int]) -> list[tuple[int, int] | None]:
        """Token grid (rows, cols) of each image's features, or ``None`` where there is no plain grid."""
        grids: list[tuple[int, int] | None] = []
        for n in counts:
            side = int(round(n**0.5))
            grids.append((side, side) if side * side == n else None)
        return grids

    def vision_key_projection(self) -> torch.nn.Module | None:
        """The key projection of the vision tower's last attention layer (``k_proj`` in CLIP/SigLIP, ``key`` in
        DINOv2), whose outputs AIM uses as the merge metric for images; ``None`` if the tower has none."""
        tower = self.vision_tower()
        if tower is None:
            return None
        found = None
        for name, module in tower.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in hf.VISION_KEY_PROJECTIONS:
                found = module  # modules come in layer order: keep the last
        return found

    def final_norm(self) -> torch.nn.Module | None:
        """The decoder's final norm (applied before the LM head), or ``None`` if the decoder has none."""
        for name in hf.FINAL_NORM_NAMES:
            norm = getattr(self.decoder, name, None)
            if isinstance(norm, torch.nn.Module):
                return norm
        return None

    def rope(self, x: torch.Tensor, position_ids: torch.Tensor, layer: int) -> Any:
        """The decoder's RoPE ``(cos, sin)`` at ``position_ids`` (B, K) for decoder layer ``layer`` (its layer type
        picks the table where the family has several), in ``x``'s dtype."""
        types = list(getattr(self.text_config, "layer_types", None) or [])
        return hf.rotary_embeddings(self.decoder, x, position_ids, types[layer] if layer < len(types) else None)

    def text_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The LLM input embeddings of ``input_ids`` (B, N), shape (B, N, C): the model's own input embedding layer,
        with any scaling it applies (what the decoder would receive for these tokens)."""
        return self.model.get_input_embeddings()(input_ids)

    def side_token_inputs(self) -> tuple[str, ...]:
        """Per-token forward inputs that must be shortened with ``input_ids`` by a pre-LLM reduction."""
        return hf.TOKEN_TYPE_INPUTS

    def generated_token_types(self) -> dict[str, int]:
        """The value of every per-token side input (`side_token_inputs`) at a generated token, as the model's
        ``generate()`` appends it: 0 (text) unless the family says otherwise (PaliGemma: 1, its causal suffix). A
        no-cache recomputation of prompt + generated tokens must use the same values."""
        return {key: 0 for key in self.side_token_inputs()}

    def prellm_position_ids(
        self,
        kwargs: dict[str, Any],
        enc_kwargs: dict[str, Any],
        src_index: torch.Tensor,
        valid: torch.Tensor,
        new_grids: list[tuple[int, int] | None],
    ) -> torch.Tensor | None:
        """Position ids for the shortened sequence, or ``None`` to let the model number it contiguously.

        Args:
            kwargs: The original forward kwargs (full-length ``input_ids`` etc.).
            enc_kwargs: The image-encoder inputs.
            src_index: For every position of the shortened sequence, the original position it stands for, shape
                (B, N').
            valid: Which positions of the shortened sequence are real (not added padding), shape (B, N') bool.
            new_grids: Grid of each image after the merger, when it still forms one.

        Returns:
            For an M-RoPE model, the model's own positions of the full prompt gathered at ``src_index`` (every kept or
            merged token keeps the position of its first source; text keeps its own), shape (3, B, N'); else
            ``None``.
        """
        if not (self.uses_mrope() and hf.has_rope_index(self.base)):
            return None
        ids = kwargs[hf.INPUT_IDS]
        call = {**kwargs, **enc_kwargs}
        if call.get("mm_token_type_ids") is None:
            call["mm_token_type_ids"] = self.mm_token_types(ids)
        pos = hf.rope_index(self.base, call)  # (3, B, N)
        pos = pos.gather(2, src_index[None].expand(pos.shape[0], -1, -1))  # (3, B, N')
        return pos.masked_fill(~valid[None], 1)
