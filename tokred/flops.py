"""Analytical FLOPs model of a multimodal LLM, from its config and the tokens each layer actually processed.

Everything here is pure arithmetic on config numbers: no torch, no transformers import, no download. Counts are
for batch size 1 (multiply by the batch for more).

Two conventions for the LLM decoder:

``"llm-viewer"`` (default)
    The accounting AIM reports (Zhong et al., arXiv 2412.03248, §4 / poster), computed by LLM-Viewer (Yuan et
    al., arXiv 2402.16363; ``hahnyuan/LLM-Viewer``, ``model_analyzer.py``). 2 FLOPs per multiply-accumulate. For a
    layer in which ``q`` query tokens attend to ``k`` key tokens (prefill: ``q = k = n``), with hidden size ``d``,
    MLP width ``m``, ``H`` query heads, ``d_q = H·head_dim`` (``= d`` for every model in :data:`KNOWN_CONFIGS`)
    and GQA key/value width ``d_kv = num_key_value_heads·head_dim``::

        projections = 2q·d·d_q + 2q·d_q·d + 4q·d·d_kv     # q, o; k, v      (4nd² + 4nd·d_kv when d_q = d)
        mlp         = 6q·d·m                              # SwiGLU gate, up, down
        attention   = 4q·k·d_q                            # QKᵀ and AV      (4n²d)
        softmax     = 5H·q·k                              # max, sub, exp, sum, div
        elementwise = 18q·d                               # 2 RMSNorms (7qd each), 2 residual adds, SiLU·mul (2qd)

    The elementwise term is what LLM-Viewer also charges (its activation is charged on ``d`` elements, not ``m``).
    It is < 0.02 % of the total at AIM's settings but makes the reproduction exact to AIM's two decimals: 99.63 TB
    and 14.76 TB for LLaVA-OneVision-7B (``tests/unit/test_flops.py``); without it 99.62 and 14.75.
    Attention is charged on the full ``q×k`` score matrix (no causal halving), as LLM-Viewer and AIM do.

``"fastv"``
    The formula of the FastV paper (Chen et al., arXiv 2403.06764, §4): ``4nd² + 2n²d + 2ndm`` per layer, i.e.
    one FLOP per multiply-accumulate, four d×d projections (no GQA), a two-matrix FFN, no softmax or norms.
    Decode generalises it to ``4qd² + 2qkd + 2qdm``. Numbers are roughly half of ``llm-viewer``'s and the FFN
    share is smaller; use it only to compare with papers that report FastV-style ratios.

Vision tower (:func:`vision_tower_flops`) and projector (:func:`projector_flops`) use 2 FLOPs per MAC.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tokred.errors import UnknownNameError

__all__ = [
    "CONVENTIONS",
    "KNOWN_CONFIGS",
    "Convention",
    "FlopsReport",
    "LayerFlops",
    "TextDims",
    "VisionDims",
    "aim_linear_schedule",
    "decode_step_flops",
    "flops_breakdown",
    "get_known_config",
    "prefill_flops",
    "projector_flops",
    "tokens_per_layer_from_budgets",
    "vision_tower_flops",
]

Convention = Literal["llm-viewer", "fastv"]
CONVENTIONS: tuple[str, ...] = ("llm-viewer", "fastv")

_MISSING = object()


def _get(config: Any, key: str, default: Any = _MISSING) -> Any:
    """``config[key]`` for mappings, ``getattr(config, key)`` otherwise; ``None`` counts as missing."""
    value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
    if value is None:
        if default is _MISSING:
            raise ValueError(f"config {type(config).__name__} has no '{key}' (needed for the FLOPs model)")
        return default
    return value


# ----------------------------------------------------------------------------------------------------------------
# Dimensions
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDims:
    """The LLM decoder dimensions the FLOPs model needs.

    Attributes:
        hidden_size: Model width ``d``.
        intermediate_size: MLP width ``m``.
        num_attention_heads: Query heads ``H``.
        num_key_value_heads: Key/value heads (GQA); equals ``H`` for multi-head attention.
        num_hidden_layers: Decoder layers ``L``.
        head_dim: Per-head width; ``d // H`` when the config does not set it.
    """

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    head_dim: int

    @property
    def q_dim(self) -> int:
        """Query/output projection width ``d_q = H·head_dim``."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Key/value projection width ``d_kv = num_key_value_heads·head_dim``."""
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_config(cls, config: Any) -> TextDims:
        """Read the dimensions from a transformers config, a plain dict, or any object with those attributes.

        A multimodal config (or a :data:`KNOWN_CONFIGS` entry) is accepted too: its ``text_config`` is used.

        Raises:
            ValueError: If a required field is missing.
        """
        if isinstance(config, TextDims):
            return config
        text = _get(config, "text_config", None)
        if text is not None:
            config = text
        d = int(_get(config, "hidden_size"))
        heads = int(_get(config, "num_attention_heads"))
        return cls(
            hidden_size=d,
            intermediate_size=int(_get(config, "intermediate_size")),
            num_attention_heads=heads,
            num_key_value_heads=int(_get(config, "num_key_value_heads", heads)),
            num_hidden_layers=int(_get(config, "num_hidden_layers")),
            head_dim=int(_get(config, "head_dim", d // heads)),
        )


@dataclass(frozen=True)
class VisionDims:
    """ViT-style vision tower dimensions (CLIP, SigLIP, DINOv2, Qwen2-VL's ViT).

    Attributes:
        hidden_size: Tower width (``embed_dim`` in Qwen2-VL's vision config, whose ``hidden_size`` is the LLM's).
        intermediate_size: MLP width (``mlp_ratio·width`` when the config gives a ratio).
        num_attention_heads: Attention heads.
        num_hidden_layers: Encoder layers (``depth`` in Qwen2-VL).
    """

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int

    @classmethod
    def from_config(cls, config: Any) -> VisionDims:
        """Read the dimensions from a vision config, a plain dict, or a multimodal config's ``vision_config``.

        Raises:
            ValueError: If a required field is missing.
        """
        if isinstance(config, VisionDims):
            return config
        if isinstance(config, Mapping) and "vision_config" in config and config["vision_config"] is None:
            raise ValueError(f"no vision tower dims in this config ({config.get('notes', 'vision_config is None')})")
        vision = _get(config, "vision_config", None)
        if vision is not None:
            config = vision
        width = int(_get(config, "embed_dim", None) or _get(config, "hidden_size"))
        mlp = _get(config, "intermediate_size", None)
        if mlp is None:
            mlp = float(_get(config, "mlp_ratio")) * width
        return cls(
            hidden_size=width,
            intermediate_size=int(mlp),
            num_attention_heads=int(_get(config, "num_attention_heads", None) or _get(config, "num_heads")),
            num_hidden_layers=int(_get(config, "num_hidden_layers", None) or _get(config, "depth")),
        )


# ----------------------------------------------------------------------------------------------------------------
# LLM decoder
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerFlops:
    """FLOPs of one decoder layer, per term (see the module docstring for the formulas).

    Attributes:
        layer: 0-indexed layer.
        queries: Tokens whose hidden states the layer computed (prefill: the sequence length; decode: 1).
        keys: Tokens attended to (prefill: the sequence length; decode: cache length + 1).
        projections: q, k, v, o projections.
        mlp: The MLP (SwiGLU in ``llm-viewer``, two matrices in ``fastv``).
        attention: ``QKᵀ`` and ``AV``.
        softmax: Softmax (``llm-viewer`` only).
        elementwise: Norms, residual adds, activation (``llm-viewer`` only).
    """

    layer: int
    queries: int
    keys: int
    projections: float
    mlp: float
    attention: float
    softmax: float
    elementwise: float

    @property
    def total(self) -> float:
        """Sum of all terms."""
        return self.projections + self.mlp + self.attention + self.softmax + self.elementwise

    def to_dict(self) -> dict[str, float]:
        """Plain dict of every field plus ``total``."""
        return {**asdict(self), "total": self.total}


def _layer_flops(dims: TextDims, layer: int, q: int, k: int, convention: str) -> LayerFlops:
    """FLOPs of one layer where ``q`` query tokens attend to ``k`` keys, in ``convention``."""
    d, m, heads = dims.hidden_size, dims.intermediate_size, dims.num_attention_heads
    if convention == "llm-viewer":
        return LayerFlops(
            layer=layer,
            queries=q,
            keys=k,
            projections=4.0 * q * d * dims.q_dim + 4.0 * q * d * dims.kv_dim,
            mlp=6.0 * q * d * m,
            attention=4.0 * q * k * dims.q_dim,
            softmax=5.0 * heads * q * k,
            elementwise=18.0 * q * d,
        )
    if convention == "fastv":
        return LayerFlops(layer, q, k, 4.0 * q * d * d, 2.0 * q * d * m, 2.0 * q * k * d, 0.0, 0.0)
    raise ValueError(f"unknown FLOPs convention {convention!r}; use one of: {', '.join(CONVENTIONS)}")


def _check_per_layer(values: Sequence[int], dims: TextDims, what: str) -> list[int]:
    counts = [int(v) for v in values]
    if len(counts) != dims.num_hidden_layers:
        raise ValueError(
            f"{what} has {len(counts)} entries but the model has {dims.num_hidden_layers} decoder layers; "
            "give one count per layer"
        )
    if any(c < 0 for c in counts):
        raise ValueError(f"{what} must be non-negative, got {counts}")
    return counts


def flops_breakdown(
    text_config: Any,
    tokens_per_layer: Sequence[int],
    convention: Convention = "llm-viewer",
    *,
    stage: Literal["prefill", "decode"] = "prefill",
) -> list[LayerFlops]:
    """Per-layer, per-term FLOPs of the LLM decoder.

    Args:
        text_config: transformers config (text or multimodal), dict, or object with the :class:`TextDims` fields.
        tokens_per_layer: ``stage="prefill"``: the sequence length each layer processed, ``n_l``.
            ``stage="decode"``: each layer's KV-cache length ``c_l`` before the new token.
        convention: ``"llm-viewer"`` or ``"fastv"`` (module docstring).
        stage: Prefill (``q = k = n_l``) or one decode step (``q = 1``, ``k = c_l + 1``: the new token also
            attends to itself).

    Returns:
        One :class:`LayerFlops` per decoder layer; ``sum(x.total for x in result)`` is the stage's total.

    Raises:
        ValueError: Wrong number of layers, negative counts, or an unknown convention/stage.
    """
    dims = TextDims.from_config(text_config)
    counts = _check_per_layer(tokens_per_layer, dims, "tokens_per_layer")
    if stage == "prefill":
        return [_layer_flops(dims, i, n, n, convention) for i, n in enumerate(counts)]
    if stage == "decode":
        return [_layer_flops(dims, i, 1, c + 1, convention) for i, c in enumerate(counts)]
    raise ValueError(f"unknown stage {stage!r}; use 'prefill' or 'decode'")


def prefill_flops(
    text_config: Any,
    tokens_per_layer: Sequence[int],
    convention: Convention = "llm-viewer",
) -> float:
    """LLM decoder prefill FLOPs from the tokens each layer actually processed.

    ``total = Σ_l F(n_l)`` with ``F`` the per-layer cost of the convention (module docstring). For AIM's
    accounting ``n_l = floor(r(l)·N_v) + P`` (see :func:`aim_linear_schedule`).

    Args:
        text_config: transformers config (text or multimodal), dict, or object with the :class:`TextDims` fields.
        tokens_per_layer: Sequence length processed by each decoder layer (``handle.stats.tokens_per_layer``).
        convention: ``"llm-viewer"`` (2 FLOPs/MAC, AIM/LLM-Viewer) or ``"fastv"`` (FastV paper §4).

    Returns:
        FLOPs (divide by 1e12 for the "TB" of the AIM paper).

    Example:
        >>> cfg = get_known_config("llava-onevision-7b")
        >>> round(prefill_flops(cfg, [6372] * 28) / 1e12, 2)
        99.63
    """
    return math.fsum(x.total for x in flops_breakdown(text_config, tokens_per_layer, convention))


def decode_step_flops(
    text_config: Any,
    cache_len_per_layer: Sequence[int],
    convention: Convention = "llm-viewer",
) -> float:
    """FLOPs of one decode step: one new token through every layer, attending to that layer's cache and itself.

    Per layer (``llm-viewer``): ``4d·d_q + 4d·d_kv + 6dm + 4(c_l+1)·d_q + 5H(c_l+1) + 18d``.

    Args:
        text_config: As for :func:`prefill_flops`.
        cache_len_per_layer: KV-cache length of each layer before the step (``bench.kv_cache_lengths``); with
            in-LLM pruning that drops cache entries, layers differ.
        convention: ``"llm-viewer"`` or ``"fastv"``.

    Returns:
        FLOPs of the step (LM head excluded).
    """
    parts = flops_breakdown(text_config, cache_len_per_layer, convention, stage="decode")
    return math.fsum(x.total for x in parts)


# ----------------------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------------------


def tokens_per_layer_from_budgets(text_tokens: int, visual_per_layer: Sequence[int]) -> list[int]:
    """Sequence length of each layer from a constant text length and per-layer visual token budgets.

    ``n_l = text_tokens + visual_per_layer[l]``: text (system prompt, question, template) is never reduced, as
    in AIM, FastV and PyramidDrop.

    Args:
        text_tokens: Non-visual tokens ``P`` in the prompt.
        visual_per_layer: Visual tokens kept at each layer.

    Returns:
        The list to pass as ``tokens_per_layer``.

    Raises:
        ValueError: If any count is negative.
    """
    if text_tokens < 0 or any(v < 0 for v in visual_per_layer):
        raise ValueError("token counts must be non-negative")
    return [int(text_tokens) + int(v) for v in visual_per_layer]


def aim_linear_schedule(n_visual: int, num_layers: int, l1: int, l2: int) -> list[int]:
    """Visual tokens per layer under AIM's piecewise-linear schedule, as charged by AIM's FLOPs script.

    Reference for tests and FLOPs reproduction only (the scheduler plugin lives in ``schedules/``). With
    1-indexed layer ``l``, layer ``l`` keeps ``floor(r(l)·N_v)`` tokens::

        r(l) = 1                    l ≤ l1
        r(l) = (l2 − l)/(l2 − l1)   l1 < l ≤ l2
        r(l) = 0                    l ≥ l2

    Computed in integers (``N_v·(l2−l) // (l2−l1)``), so no float rounding. AIM's default is ``(14, 22)`` for
    Qwen2-7B (28 layers) and ``(13, 21)`` for Vicuna-7B (32 layers); ``l2 > L`` keeps tokens to the end.

    Args:
        n_visual: Visual tokens entering the LLM ``N_v`` (after merging).
        num_layers: Decoder layers ``L``.
        l1: Last layer with every visual token.
        l2: First layer with none.

    Returns:
        ``L`` counts, index 0 = layer 1.

    Raises:
        ValueError: If ``l1 >= l2`` or a count is negative.
    """
    if not 0 <= l1 < l2 or n_visual < 0 or num_layers < 0:
        raise ValueError(f"need 0 <= l1 < l2 and non-negative counts, got l1={l1}, l2={l2}, n_visual={n_visual}")
    out = []
    for layer in range(1, num_layers + 1):
        if layer <= l1:
            out.append(n_visual)
        else:
            out.append(n_visual * max(l2 - layer, 0) // (l2 - l1))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Vision tower, projector, report
# ----------------------------------------------------------------------------------------------------------------


def vision_tower_flops(vision_config: Any, n_tokens_per_layer: int | Sequence[int]) -> float:
    """FLOPs of a ViT-style vision tower (CLIP, SigLIP, DINOv2, Qwen2-VL's ViT) on one image, 2 FLOPs/MAC.

    Per layer with ``n`` tokens, width ``d``, MLP width ``m`` (standard two-matrix MLP)::

        F(n) = 8nd² + 4ndm + 4n²d       # q, k, v, o; fc1, fc2; QKᵀ and AV

    Not counted (each well under 1 %): patch embedding, softmax, norms, biases. Attention is per image: for
    several images or frames with block-diagonal attention, call once per image and add. Not valid for towers
    with windowed attention or gated MLPs (Qwen2.5-VL).

    Args:
        vision_config: Vision config (or multimodal config with ``vision_config``), dict, or :class:`VisionDims`.
        n_tokens_per_layer: Tokens per layer (including CLS), an ``int`` for every layer, or one count per layer
            run (fewer than ``num_hidden_layers`` if the tower is truncated; token merging inside it, ToMe-style,
            gives decreasing counts).

    Returns:
        FLOPs.

    Raises:
        ValueError: More counts than layers, or negative counts.
    """
    dims = VisionDims.from_config(vision_config)
    if isinstance(n_tokens_per_layer, int):
        counts = [n_tokens_per_layer] * dims.num_hidden_layers
    else:
        counts = [int(n) for n in n_tokens_per_layer]
    if len(counts) > dims.num_hidden_layers or any(n < 0 for n in counts):
        raise ValueError(
            f"n_tokens_per_layer: {len(counts)} non-negative counts expected at most {dims.num_hidden_layers}"
        )
    d, m = dims.hidden_size, dims.intermediate_size
    return math.fsum(8.0 * n * d * d + 4.0 * n * d * m + 4.0 * n * n * d for n in counts)


def projector_flops(n_tokens: int, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> float:
    """FLOPs of a two-layer MLP projector (``Linear → GELU → Linear``), 2 FLOPs/MAC.

    ``F = 2n·in·hidden + 2n·hidden·out`` (activation and biases not counted). LLaVA-1.5 / LLaVA-OneVision:
    ``in`` = vision width, ``hidden = out`` = LLM width. Qwen2-VL's patch merger: ``in = hidden = 4·vision width``
    (2×2 patches concatenated), ``n`` = merged tokens.

    Args:
        n_tokens: Tokens entering the projector.
        in_dim: Input width.
        out_dim: Output width (the LLM's hidden size).
        hidden_dim: Width between the two layers; defaults to ``out_dim``.

    Returns:
        FLOPs.
    """
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be non-negative, got {n_tokens}")
    hidden = out_dim if hidden_dim is None else hidden_dim
    return 2.0 * n_tokens * in_dim * hidden + 2.0 * n_tokens * hidden * out_dim


@dataclass
class FlopsReport:
    """FLOPs of one forward of a (possibly reduced) multimodal model, by part.

    Attributes:
        llm_prefill: LLM decoder prefill (:func:`prefill_flops`).
        llm_decode_step: One decode step (:func:`decode_step_flops`); not part of :attr:`total`.
        vision: Vision tower (:func:`vision_tower_flops`).
        projector: Projector (:func:`projector_flops`).
        overhead: The reduction strategy's own cost (scoring, merging), supplied by the caller.
        convention: Convention of the LLM terms.
        extra: Free-form annotations (model name, token counts) carried into :meth:`to_dict`.
    """

    llm_prefill: float
    llm_decode_step: float = 0.0
    vision: float = 0.0
    projector: float = 0.0
    overhead: float = 0.0
    convention: str = "llm-viewer"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> float:
        """Compute up to the first token: ``llm_prefill + vision + projector + overhead`` (decode excluded)."""
        return self.llm_prefill + self.vision + self.projector + self.overhead

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field plus ``total``."""
        out = asdict(self)
        out["total"] = self.total
        return out


# ----------------------------------------------------------------------------------------------------------------
# Well-known configs
# ----------------------------------------------------------------------------------------------------------------


def _text(d: int, m: int, heads: int, kv_heads: int, layers: int, vocab: int) -> dict[str, int]:
    return {
        "hidden_size": d,
        "intermediate_size": m,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers,
        "head_dim": d // heads,
        "vocab_size": vocab,
    }


def _vit(d: int, m: int, heads: int, layers: int, **extra: int) -> dict[str, int]:
    return {
        "hidden_size": d,
        "intermediate_size": m,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        **extra,
    }


_VICUNA_7B = _text(4096, 11008, 32, 32, 32, vocab=32000)
_VICUNA_13B = _text(5120, 13824, 40, 40, 40, vocab=32000)
_QWEN2_7B = _text(3584, 18944, 28, 4, 28, vocab=152064)  # head_dim 128, GQA with 4 KV heads
# CLIP ViT-L/14 at 336 px: 24×24 patches + CLS; HF LLaVA runs all 24 layers (features taken from layer -2).
_CLIP_L_336 = _vit(1024, 4096, 16, 24, patch_size=14, image_size=336, tokens_per_image=577)
# SigLIP so400m/14 at 384 px with its last layer removed (26 of 27 layers), 27×27 patches, no CLS.
_SIGLIP_SO400M_384 = _vit(1152, 4304, 16, 26, patch_size=14, image_size=384, tokens_per_image=729)
# Qwen2-VL ViT: width 1280, MLP ratio 4, full attention within an image, 14-px patches, 2 frames deep.
_QWEN2_VL_VIT = _vit(1280, 5120, 16, 32, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)

KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "llava-1.5-7b": {
        "hf_id": "llava-hf/llava-1.5-7b-hf",
        "text_config": _VICUNA_7B,
        "vision_config": _CLIP_L_336,
        "projector": {"in_dim": 1024, "hidden_dim": 4096, "out_dim": 4096},
        "visual_tokens": 576,
        "notes": "Vicuna-7B + CLIP ViT-L/14-336 + 2-layer MLP; 576 visual tokens per image.",
    },
    "llava-1.5-13b": {
        "hf_id": "llava-hf/llava-1.5-13b-hf",
        "text_config": _VICUNA_13B,
        "vision_config": _CLIP_L_336,
        "projector": {"in_dim": 1024, "hidden_dim": 5120, "out_dim": 5120},
        "visual_tokens": 576,
        "notes": "Vicuna-13B + CLIP ViT-L/14-336 + 2-layer MLP; 576 visual tokens per image.",
    },
    "llava-onevision-7b": {
        "hf_id": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
        "text_config": _QWEN2_7B,
        "vision_config": _SIGLIP_SO400M_384,
        "projector": {"in_dim": 1152, "hidden_dim": 3584, "out_dim": 3584},
        "visual_tokens": 729,
        "notes": "Qwen2-7B + SigLIP-so400m/14-384 (26 layers); 729 tokens per image crop (anyres adds crops), "
        "196 per video frame after 2x2 pooling (AIM's setting: 32 frames = 6272 tokens).",
    },
    "qwen2-vl-7b": {
        "hf_id": "Qwen/Qwen2-VL-7B-Instruct",
        "text_config": _QWEN2_7B,
        "vision_config": _QWEN2_VL_VIT,
        "projector": {"in_dim": 5120, "hidden_dim": 5120, "out_dim": 3584},
        "visual_tokens": None,
        "notes": "Qwen2-7B text dims + 32-layer ViT (width 1280); dynamic resolution: the ViT sees (H/14)(W/14) "
        "patches, the LLM a quarter of them after the 2x2 patch merger (the projector row).",
    },
    "qwen2.5-vl-7b": {
        "hf_id": "Qwen/Qwen2.5-VL-7B-Instruct",
        "text_config": _QWEN2_7B,
        "vision_config": None,
        "projector": None,
        "visual_tokens": None,
        "notes": "Qwen2-7B text dims. Vision tower left out: its ViT uses windowed attention and a gated MLP, "
        "which vision_tower_flops does not model.",
    },
}


def _normalise_name(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def get_known_config(name: str) -> dict[str, Any]:
    """A built-in model config by name (case-insensitive) or Hugging Face id.

    Args:
        name: A key of :data:`KNOWN_CONFIGS` (e.g. ``"llava-onevision-7b"``) or its ``hf_id``.

    Returns:
        The entry: ``text_config``, ``vision_config`` (or ``None``), ``projector`` dims (or ``None``),
        ``visual_tokens`` per image (or ``None`` for dynamic resolution), ``hf_id``, ``notes``. Pass it directly
        as ``text_config``/``vision_config`` to the functions of this module.

    Raises:
        UnknownNameError: For an unknown name; the message lists close matches and every available name.
    """
    key = _normalise_name(name)
    aliases: dict[str, str] = {k: k for k in KNOWN_CONFIGS}
    aliases.update({_normalise_name(v["hf_id"]): k for k, v in KNOWN_CONFIGS.items()})
    if key in aliases:
        return copy.deepcopy(KNOWN_CONFIGS[aliases[key]])
    close = difflib.get_close_matches(key.split("/")[-1], list(KNOWN_CONFIGS), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownNameError(f"Unknown model config '{name}'.{hint} Available: {', '.join(KNOWN_CONFIGS)}")
