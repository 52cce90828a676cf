"""Tiny random models of *any* image-text-to-text family in the installed transformers, built from its default config.

[`tiny_model`][tokred.testing.models.tiny_model] has hand-written builders for the families tokred is developed on;
this module covers the rest, generically: the family's default config with every sub-config shrunk (2-4 layers,
hidden 32-64, few heads and experts), the model in eval mode, fp32, SDPA where the family supports it, and inputs
built from what its ``get_image_features`` asks for. It is what the family sweep (`tokred.testing.sweep`) runs on.

Input recipes, by the image inputs ``get_image_features`` requires:

* ``plain``: ``pixel_values`` (B, C, S, S) at the tower's own image size;
* ``grid_thw`` (Qwen-style towers): flattened patches (B·h·w, C·t·p·p) and ``image_grid_thw`` = [1, h, w] with
  h = w = 2 × the spatial merge size;
* ``image_sizes`` (Pixtral-style towers): ``pixel_values`` (B, C, S, S) at a 64-pixel image size, ``image_sizes``;
* ``pixel_attention_mask`` (Idefics-style): ``pixel_values`` (B, 1, C, S, S) and an all-ones mask.

A family whose inputs none of these can build raises [`NotBuildable`][tokred.testing.generic.NotBuildable] with the
reason, as does one whose default config cannot be built or run tiny offline.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable
from typing import Any

import torch

from tokred.adapters import hf

__all__ = ["NotBuildable", "generic_tiny_model", "image_text_families"]

_TEXT = dict(
    num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, moe_intermediate_size=32, num_experts=4, n_routed_experts=4, num_local_experts=4,
    num_experts_per_tok=2, shared_expert_intermediate_size=32, max_position_embeddings=2048,
)  # fmt: skip
_VISION = dict(
    num_hidden_layers=2, depth=2, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_heads=2,
    out_hidden_size=64, embed_dim=32, projection_dim=64, num_key_value_heads=2,
)  # fmt: skip
#: Per-family config additions the default config lacks but the modeling code reads (a dict value for a sub-config
#: sets those fields of it).
_CONFIG_EXTRAS: dict[str, dict[str, Any]] = {
    # the thinker's get_rope_index reads the full Omni config's vision_start_token_id (its default there)
    "qwen2_5_omni_thinker": {"vision_start_token_id": 151652},
    "qwen3_omni_moe_thinker": {"vision_start_token_id": 151652},
    # the default config names no DeepStack layer map nor Q-Former window rate; an 8 x 8 patch grid (CLIP's 224 px
    # in 28 px patches) in 4 x 4 windows of 2 x 2 queries, anyres tiles of that size, injections within 4 layers
    "granite4_vision": {
        "vision_config": {"patch_size": 28},
        "downsample_rate": "2/4",
        "deepstack_layer_map": [(1, 0), (2, 1)],
        "spatial_target_layers": [0, 1, 2, 3],
        "image_grid_pinpoints": [[224, 448], [448, 224], [448, 448]],
    },
    # its projector maps a tower patch count to a query count; the default knows the checkpoints' 35 x 35 and 70 x 70
    # grids only: the tiny tower's 7 x 7 to 4 x 4 queries
    "aria": {"projector_patch_to_query_dict": {49: 16}, "max_value_projector_patch_to_query_dict": 16},
}
#: Per-family LLM config values after shrinking, where the family's code supports less than the tiny defaults.
_TEXT_EXTRAS: dict[str, dict[str, Any]] = {
    # its eager attention function has no key/value head repeat: multi-head attention only, as its checkpoints
    "unlimited_ocr": {"num_key_value_heads": _TEXT["num_attention_heads"]},
    # its default config has indexed (QSA) attention layers but leaves the indexer unset: one key head (its only
    # supported count), budget 8 tokens in blocks of 4, so a tiny prompt is attended sparsely as in the real model
    "qwen4_exp": dict(
        indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=16, indexer_budget=8, indexer_compress_ratio=4
    ),
    # RoPE parameters per layer type (None: a NoPE layer), which its default config leaves empty; M-RoPE sections
    # come from the modeling code's default, rescaled
    "cohere_compass": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
    # its default config has no M-RoPE sections but get_rope_index needs >= 3 axes (the last three: width, height,
    # image index; earlier ones keep 1-D positions): four, as its checkpoints' xdrope_section
    "hunyuan_vl": {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2, 2]}},
}
#: Per-family vision config values after shrinking. Llama 4's pixel-shuffle MLP reads the shuffled width
#: (hidden / ratio^2) as ``intermediate_size`` and its projector widths are separate fields the default config sets
#: inconsistently (vision_output_dim 7680 vs projector_output_dim 4096; the checkpoints use 4096 for both).
_VISION_EXTRAS: dict[str, dict[str, Any]] = {
    "llama4": {"intermediate_size": 4 * _VISION["hidden_size"], "projector_input_dim": 64, "projector_output_dim": 64,
               "vision_output_dim": 64},
}  # fmt: skip
#: Multi-head latent attention (DeepSeek-style MLA, ``qk_rope_head_dim``) and its lightning indexer, tiny: the
#: defaults' latent ranks and head widths stay at checkpoint size otherwise, mismatching the shrunk heads.
_MLA = dict(
    qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, kv_lora_rank=16, q_lora_rank=32, qk_head_dim=16,
    index_head_dim=16, index_n_heads=2, index_topk=8,
)  # fmt: skip
_TEXT_NAMES = ("text_config", "llm_config", "language_config", "text_model_config")


class NotBuildable(Exception):  # noqa: N818 - a verdict, not an error of tokred's
    """The family cannot be built as a tiny random model offline with the generic recipes (the message says why).

    Attributes:
        model: The tiny model when it was built but no inputs could be (else ``None``).
    """

    def __init__(self, message: str, model: Any = None) -> None:
        super().__init__(message)
        self.model = model


def image_text_families() -> dict[str, str]:
    """``{model_type: class name}`` of every image-text-to-text model class the installed transformers registers."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return dict(sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.items()))


def _raw(cfg: Any, key: str) -> Any:
    """``cfg.key`` without transformers' per-layer-attribute guard (heterogeneous configs, transformers >= 5.24)."""
    raw = getattr(cfg, "_getattr_without_heterogeneous_validation", None)
    if raw is not None:
        return raw(key, None)
    return getattr(cfg, key, None)


def _shrink(cfg: Any, over: dict[str, int]) -> None:
    """Overwrite the integer size fields ``cfg`` has; keep per-layer type lists as long as the new depth.

    A heterogeneous config (per-layer overrides, e.g. Gemma 4's wider full-attention heads) keeps one tiny layer of
    every distinct layer kind, its overrides scaled like the global value they differ from.
    """
    spec = cfg.__dict__.get("_heterogeneity_spec")
    old_values = {key: _raw(cfg, key) for key in over}
    depth = _raw(cfg, "num_hidden_layers")
    if spec is not None:
        cfg.per_layer_config = None  # re-applied below, for the tiny depth
    for key, value in over.items():
        old = old_values[key]
        if isinstance(old, int) and not isinstance(old, bool):
            setattr(cfg, key, value)
    if "head_dim" in vars(cfg) and cfg.head_dim is None and isinstance(getattr(cfg, "hidden_size", None), int):
        heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "num_heads", None)
        cfg.head_dim = cfg.hidden_size // heads if isinstance(heads, int) and heads > 0 else None  # "derive it"
    n = getattr(cfg, "num_hidden_layers", None)
    if not isinstance(n, int) or not isinstance(depth, int):
        return
    types = getattr(cfg, "layer_types", None)
    overrides = spec.per_layer_overrides if spec is not None else {}
    sel = _pick_layers(depth, n, types, overrides) if spec is not None else list(range(n))
    if isinstance(types, list) and types:
        cfg.layer_types = _attention_first(list(types), n) if spec is None else [types[j] for j in sel]
    for key, value in list(vars(cfg).items()):  # other per-layer lists (e.g. dense / sparse MLP kinds)
        if key.endswith("layer_types") and key != "layer_types" and isinstance(value, list) and len(value) == depth:
            setattr(cfg, key, [value[j] for j in sel])
    if spec is not None:
        cfg.per_layer_config = {
            i: {k: _scaled(v, old_values.get(k), getattr(cfg, k, None)) for k, v in overrides[j].items()}
            for i, j in enumerate(sel)
            if j in overrides
        }


def _attention_first(types: list[str], n: int) -> list[str]:
    """``n`` layer types of a hybrid decoder whose state layers (`hf.STATE_LAYER_TYPES`: linear attention,
    convolution) keep one state per sequence: its attention kinds, in turn, then one layer of every state kind last.

    The pipeline checks score at layers 0..2 and prune at 1..3, so their scorers read attention layers and every state
    layer runs after the pruning layer, on the kept sequence (decode must continue its state). Other decoders keep the
    first ``n`` types, repeated."""
    state = list(dict.fromkeys(t for t in types if t in hf.STATE_LAYER_TYPES))
    attention = list(dict.fromkeys(t for t in types if t not in hf.STATE_LAYER_TYPES))
    if not state or not attention or len(state) >= n:
        return [(types * n)[j] for j in range(n)]
    head = n - len(state)
    return [attention[j % len(attention)] for j in range(head)] + state


def _pick_layers(depth: int, n: int, types: Any, overrides: dict[int, dict[str, Any]]) -> list[int]:
    """``n`` of the ``depth`` original layers: the first of every distinct (type, overrides) kind, then the first."""
    kinds: dict[str, int] = {}
    for j in range(depth):
        kind = repr((types[j] if isinstance(types, list) and j < len(types) else None, overrides.get(j)))
        kinds.setdefault(kind, j)
    firsts = sorted(kinds.values())[:n]
    rest = [j for j in range(depth) if j not in firsts][: n - len(firsts)]
    return sorted(firsts + rest)


def _scaled(value: Any, old_global: Any, new_global: Any) -> Any:
    """A per-layer override ``value`` of a field shrunk from ``old_global`` to ``new_global``, scaled alike."""
    ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (value, old_global, new_global))
    if not ints or old_global <= 0:
        return value
    return max(1, new_global * value // old_global)


def _build(model_type: str, text_layer_types: list[str] | None = None) -> Any:
    import transformers as tf
    from transformers import AutoConfig

    cls = getattr(tf, image_text_families()[model_type], None)
    if cls is None:
        raise NotBuildable(f"transformers exports no {image_text_families()[model_type]}")
    cfg = AutoConfig.for_model(model_type)
    for key, value in _CONFIG_EXTRAS.get(model_type, {}).items():
        if isinstance(value, dict) and isinstance(getattr(cfg, key, None), tf.PretrainedConfig):
            for sub_key, sub_value in value.items():
                setattr(getattr(cfg, key), sub_key, sub_value)
        else:
            setattr(cfg, key, value)
    vision_cls = (getattr(cfg, "sub_configs", None) or {}).get("vision_config")
    if getattr(cfg, "vision_config", "") is None and vision_cls not in (None, tf.AutoConfig):
        cfg.vision_config = vision_cls()  # a default config without a vision tower (Gemma 4): give it one
    width = _raw(cfg.get_text_config(), "hidden_size")  # the LLM's width, before shrinking
    vision_width = _raw(getattr(cfg, "vision_config", None), "hidden_size")
    subs = {name: sub for name, sub in vars(cfg).items() if isinstance(sub, tf.PretrainedConfig)}
    for name, sub in subs.items():
        over = _TEXT if name in _TEXT_NAMES else _VISION
        if name not in _TEXT_NAMES and name != "vision_config" and _raw(sub, "hidden_size") == width:
            over = {**_VISION, "hidden_size": _TEXT["hidden_size"]}  # a resampler working at the LLM's width
        _shrink(sub, over)
    if not any(name in _TEXT_NAMES for name in subs):
        _shrink(cfg, _TEXT)
    elif isinstance(_raw(cfg, "hidden_size"), int):
        cfg.hidden_size = _TEXT["hidden_size"]  # a top-level copy of the LLM width (e.g. a visual embedding table)
    for sub in [cfg, *(sub for name, sub in subs.items() if name not in _TEXT_NAMES)]:
        _shrink_projector(sub, width, vision_width)
    for key, value in _TEXT_EXTRAS.get(model_type, {}).items():
        setattr(cfg.get_text_config(), key, value)
    for key, value in _VISION_EXTRAS.get(model_type, {}).items():
        setattr(cfg.vision_config, key, value)
    if text_layer_types is not None:
        cfg.get_text_config().layer_types = list(text_layer_types)
    _fix_config(cfg, _modeling_source(cls, cfg.get_text_config()))
    torch.manual_seed(0)
    model = cls(cfg).eval()
    try:
        model.set_attn_implementation("sdpa")
    except Exception:  # noqa: BLE001 - families without SDPA keep their default
        pass
    return model


def _shrink_projector(cfg: Any, width: Any, vision_width: Any) -> None:
    """Top-level projector widths (``*_hidden_size``) copying the LLM's or the tower's (times a merge), shrunk alike."""
    for key, value in list(vars(cfg).items()):
        width_like = key.endswith(("hidden_size", "_in_dim", "_out_dim")) and key != "hidden_size"
        if not width_like or not isinstance(value, int) or isinstance(value, bool):
            continue
        if isinstance(width, int) and width > 0 and value % width == 0:
            setattr(cfg, key, _TEXT["hidden_size"] * (value // width))
        elif isinstance(vision_width, int) and vision_width > 0 and value % vision_width == 0:
            setattr(cfg, key, _VISION["hidden_size"] * (value // vision_width))  # e.g. a 2 x 2 merge: 4 x the width


def _modeling_source(cls: type, text_config: Any) -> str:
    """The source of ``cls``'s modeling module and of its language model's (where M-RoPE defaults may live)."""
    import transformers as tf
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    text_cls = getattr(tf, str(MODEL_MAPPING_NAMES.get(text_config.model_type, "")), None)
    mods = {inspect.getmodule(c) for c in (cls, text_cls) if inspect.isclass(c)}
    return "\n".join(inspect.getsource(m) for m in mods if m is not None)


def _fix_config(cfg: Any, source: str) -> None:
    """Make the shrunk config consistent: vision head width, M-RoPE sections, feature layers, vocabulary.

    ``source`` is the family's modeling code, where an M-RoPE default section list may live instead of the config.
    """
    vc, tc = getattr(cfg, "vision_config", None), cfg.get_text_config()
    _fix_mla(tc)
    _fix_mrope(tc, source)
    if getattr(tc, "sliding_window", 0) is None and "create_sliding_window_causal_mask(" in source:
        tc.sliding_window = 512  # the decoder builds a sliding mask, the default config names no window
    if vc is not None:
        _fix_vision(cfg, vc)
    ids = [v for k, v in vars(cfg).items() if k.endswith(("_token_id", "_token_index")) and isinstance(v, int)]
    vocab = _raw(tc, "vocab_size")
    if ids and isinstance(vocab, int) and max(ids) >= vocab:
        tc.vocab_size = max(ids) + 1  # special ids beyond the text vocabulary (they index the embedding)
        if isinstance(getattr(cfg, "vocab_size", None), int):
            cfg.vocab_size = tc.vocab_size
    _fix_expert_groups(tc)


def _fix_expert_groups(tc: Any) -> None:
    """Group-limited MoE routing (DeepSeek-V3's ``n_group`` / ``topk_group``) over the few tiny experts: groups of
    two (the router sums each group's top-2 scores), at most as many picked groups as there are."""
    experts, groups = _raw(tc, "n_routed_experts"), _raw(tc, "n_group")
    if not (isinstance(experts, int) and isinstance(groups, int) and groups > 1 and experts // groups < 2):
        return
    tc.n_group = max(1, experts // 2)
    if isinstance(_raw(tc, "topk_group"), int):
        tc.topk_group = min(tc.topk_group, tc.n_group)


def _fix_vision(cfg: Any, vc: Any) -> None:
    """Vision head width, an 8 x 8 patch grid (anyres pinpoints and pooled token counts alike), feature layers."""
    heads = _raw(vc, "num_attention_heads") or _raw(vc, "num_heads")
    if isinstance(_raw(vc, "head_dim"), int) and isinstance(heads, int) and heads > 0:
        vc.head_dim = vc.hidden_size // heads
    size, patch = _raw(vc, "image_size"), _raw(vc, "patch_size")
    side, step = _size(vc, "image_size", 0), _size(vc, "patch_size", 0)
    if isinstance(size, (int, list, tuple)) and isinstance(patch, (int, list, tuple)) and 0 < 8 * step < side:
        small = 8 * step  # an 8 x 8 patch grid: divisible by the usual 2x2 / 4x4 merges, few tokens
        vc.image_size = small if isinstance(size, int) else type(size)([small] * len(size))
        pins = getattr(cfg, "image_grid_pinpoints", None)
        if isinstance(pins, list) and pins:  # anyres resolutions, in tiles of the tower's image size
            cfg.image_grid_pinpoints = [[v * small // side for v in pin] for pin in pins]
    if isinstance(getattr(cfg, "mm_tokens_per_image", None), int):
        cfg.mm_tokens_per_image = 16  # pooled 4 x 4 from the 8 x 8 grid
    depth = _raw(vc, "num_hidden_layers") or _raw(vc, "depth")
    if isinstance(depth, int):
        for key, value in list(vars(cfg).items()):
            if "feature_layer" in key and isinstance(value, (int, list, tuple)) and not isinstance(value, bool):
                setattr(cfg, key, _fit_layers(value, depth))


def _fit_layers(value: Any, depth: int) -> Any:
    """Vision feature layer index/indices (of ``depth + 1`` hidden states) brought into the tiny tower's range."""
    if isinstance(value, int):
        return value if -(depth + 1) <= value <= depth else (-1 if value < 0 else depth)
    return type(value)(v if -(depth + 1) <= v <= depth else v % (depth + 1) for v in value)


def _fix_mla(tc: Any) -> None:
    """Shrink multi-head latent attention consistently (`_MLA`), on every layer (per-layer overrides too).

    The rotary width must stay the RoPE slice ``qk_rope_head_dim``: where the config rotates part of ``head_dim``
    (``partial_rotary_factor``, Dots 3) ``head_dim`` is the query/key width nope + rope and the factor their ratio,
    else ``head_dim`` is the RoPE slice itself (DeepSeek-V3 style). Key/value heads equal the query heads (latent
    keys are expanded per query head). NoPE decoders (``qk_rope_head_dim`` 0) are left alone."""
    rope_dim = _raw(tc, "qk_rope_head_dim")
    if not isinstance(rope_dim, int) or isinstance(rope_dim, bool) or rope_dim <= 0:
        return
    spec = tc.__dict__.get("_heterogeneity_spec")
    overrides = dict(spec.per_layer_overrides) if spec is not None else {}
    if overrides:
        tc.per_layer_config = None
    for key, value in _MLA.items():
        if isinstance(_raw(tc, key), int) and not isinstance(_raw(tc, key), bool):
            setattr(tc, key, value)
    tc.num_key_value_heads = _raw(tc, "num_attention_heads")
    ropes = _rope_dicts(tc)
    partial = any("partial_rotary_factor" in r for r in ropes) or _raw(tc, "partial_rotary_factor") is not None
    head = _MLA["qk_nope_head_dim"] + _MLA["qk_rope_head_dim"] if partial else _MLA["qk_rope_head_dim"]
    tc.head_dim = head
    for rope in ropes:
        if "partial_rotary_factor" in rope:
            rope["partial_rotary_factor"] = _MLA["qk_rope_head_dim"] / head
    if _raw(tc, "partial_rotary_factor") is not None:
        tc.partial_rotary_factor = _MLA["qk_rope_head_dim"] / head
    if overrides:  # the per-layer overrides keep their other fields; MLA widths and heads follow the globals
        mla = {*_MLA, "head_dim", "num_key_value_heads", "num_attention_heads"}
        tc.per_layer_config = {i: {k: v for k, v in o.items() if k not in mla} for i, o in overrides.items()}


def _rope_dicts(tc: Any) -> list[dict[str, Any]]:
    """The config's RoPE parameter dicts: one, or one per layer type (nested by type, e.g. Dots 3)."""
    rope = _raw(tc, "rope_parameters")
    if not isinstance(rope, dict):
        return []
    nested = [v for v in rope.values() if isinstance(v, dict)]
    return nested or [rope]


def _fix_mrope(tc: Any, source: str) -> None:
    """Rescale M-RoPE ``mrope_section`` to the tiny rotary width (its sum is half the rotated head dims)."""
    default = re.search(r'get\("mrope_section", \[(\d+), (\d+), (\d+)\]\)', source)
    for name in ("rope_parameters", "rope_scaling"):
        ropes = [_raw(tc, name)]
        if isinstance(ropes[0], dict) and set(ropes[0]) & set(_raw(tc, "layer_types") or ()):
            ropes = list(ropes[0].values())  # per layer type (Cohere Compass), None for a NoPE kind
        for rope in ropes:
            _fix_mrope_section(tc, rope, default)


def _fix_mrope_section(tc: Any, rope: Any, default: re.Match[str] | None) -> None:
    """Rescale one RoPE parameter dict's ``mrope_section`` (``default``: the modeling code's, where it has none)."""
    if isinstance(rope, dict) and default is not None and "mrope_section" not in rope:
        rope["mrope_section"] = [int(x) for x in default.groups()]  # the modeling code's default
    if not isinstance(rope, dict) or not isinstance(rope.get("mrope_section"), (list, tuple)):
        return
    heads = _raw(tc, "num_attention_heads")
    head_dim = _raw(tc, "head_dim") or tc.hidden_size // heads
    factor = rope.get("partial_rotary_factor", _raw(tc, "partial_rotary_factor") or 1.0)
    target, sec = int(head_dim * factor) // 2, list(rope["mrope_section"])
    new = [max(1, s * target // sum(sec)) for s in sec]
    new[-1] += target - sum(new)  # the last (temporal) axis takes the rest: equal h / w axes stay equal
    rope["mrope_section"] = new


def _vision(model: Any) -> Any:
    return getattr(model.config, "vision_config", None)


def _size(vc: Any, name: str, default: int) -> int:
    value = getattr(vc, name, None)
    if isinstance(value, (list, tuple)):
        value = value[0]
    if isinstance(value, dict):
        value = next(iter(value.values()))
    return int(value) if isinstance(value, int) and value > 0 else default


Pixels = Callable[[int, torch.Generator], dict[str, torch.Tensor]]


def _recipes(model: Any) -> list[tuple[str, Pixels]]:
    """The candidate input recipes for the family's image inputs, in order: (name, batch -> pixel kwargs).

    Where the signature leaves the layout open (flattened or unflattened patches, per-pixel or per-tile masks) there
    are several candidates; the first the unpatched model runs on is used.
    """
    base = model.model if hasattr(getattr(model, "model", None), "get_image_features") else model
    gif = getattr(base, "get_image_features", None)
    if gif is None:
        raise NotBuildable("no get_image_features (not a placeholder-filling image-text-to-text model)")
    params = inspect.signature(gif).parameters
    required = {k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in ("self", "kwargs")}
    vc = _vision(model)
    if vc is None:
        raise NotBuildable("no vision_config")
    c = _size(vc, "num_channels", 0) or _size(vc, "in_channels", 0) or _size(vc, "in_chans", 3)
    key = next((k for k in sorted(required) if k.startswith("pixel_values")), "pixel_values")  # 5.18: *_images
    extra = required - {key}
    s = _size(vc, "image_size", 224)
    if "image_grid_thw" in params:
        return _grid_recipes(vc, c, "image_merge_sizes" in params)
    if "image_sizes" in params and getattr(model.config, "image_grid_pinpoints", None):
        return [_anyres_recipe(model, base, c, s)]
    if extra == {"image_sizes"} or ("image_sizes" in params and "image_sizes" in required):
        vc.image_size = 64

        def sized(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
            return {"pixel_values": torch.randn(b, c, 64, 64, generator=g), "image_sizes": torch.tensor([[64, 64]] * b)}

        return [("image_sizes", sized)]
    if "spatial_shapes" in params and not extra - {"spatial_shapes", "pixel_attention_mask"}:
        return [_naflex_recipe(vc, c, _size(model.config, "downsample_factor", 2))]
    pos = [k for k in params if k.endswith("position_ids")]
    if pos and not extra - set(pos):
        return [_patch_position_recipe(vc, c, pos[0])]
    if "pixel_attention_mask" in params and not extra - {"pixel_attention_mask"}:
        return _mask_recipes(c, s)
    if extra:
        raise NotBuildable(f"get_image_features needs {sorted(extra)}, which no generic recipe builds")

    def plain(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        return {key: torch.randn(b, c, s, s, generator=g)}

    return [("plain", plain)]


def _grid_recipes(vc: Any, c: int, merge_sizes: bool = False) -> list[tuple[str, Pixels]]:
    """Qwen-style patches with ``image_grid_thw`` = [1, h, w], h = w = 2 x the merge size: flattened (B·h·w,
    C·t·p·p), or unflattened (B·h·w, C, p, p) or (1, B·h·w, C, p, p); ``image_merge_sizes`` where asked for."""
    p = _size(vc, "patch_size", 14)
    t = _size(vc, "temporal_patch_size", 0) or _size(vc, "patch_temporal", 1)
    m = _size(vc, "spatial_merge_size", 0) or _size(vc, "merge_size", 0) or _size(vc, "merge_kernel_size", 2)
    side = 2 * m
    shapes = {"grid_thw": (c * t * p * p,), "grid_thw, unflattened patches": (c, p, p)}

    def make(shape: tuple[int, ...], lead: bool) -> Pixels:
        def grid(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
            pv = torch.randn(b * side * side, *shape, generator=g)
            out = {"pixel_values": pv[None] if lead else pv, "image_grid_thw": torch.tensor([[1, side, side]] * b)}
            return {**out, "image_merge_sizes": torch.tensor([m] * b)} if merge_sizes else out

        return grid

    out = [(name, make(shape, False)) for name, shape in shapes.items()]
    return [*out, ("grid_thw, batched patches", make((c, p, p), True))]


def _anyres_recipe(model: Any, base: Any, c: int, s: int) -> tuple[str, Pixels]:
    """LLaVA-NeXT-style anyres: an s x 2s image as its tiles (B, tiles, C, s, s) and ``image_sizes``."""
    count = getattr(inspect.getmodule(type(base)), "image_size_to_num_patches", None)
    if count is None:
        raise NotBuildable("anyres image inputs, but the modeling code has no image_size_to_num_patches")
    size = (s, 2 * s)
    tiles = int(count(size, model.config.image_grid_pinpoints, s))

    def anyres(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.randn(b, tiles, c, s, s, generator=g), "image_sizes": torch.tensor([size] * b)}

    return "anyres", anyres


def _naflex_recipe(vc: Any, c: int, factor: int) -> tuple[str, Pixels]:
    """SigLIP2-NaFlex-style patch sequences: (B, P, C·p·p), a patch mask (B, P) and ``spatial_shapes`` [h, w],
    h = w = 4 x the downsample factor."""
    p, side = _size(vc, "patch_size", 16), 4 * factor

    def naflex(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": torch.randn(b, side * side, c * p * p, generator=g),
            "pixel_attention_mask": torch.ones(b, side * side, dtype=torch.long),
            "spatial_shapes": torch.tensor([[side, side]] * b),
        }

    return "spatial shapes", naflex


def _patch_position_recipe(vc: Any, c: int, key: str) -> tuple[str, Pixels]:
    """Gemma-4-style patch sequences: (B, P, C·p·p) with (x, y) patch positions, P = (2k)^2 for a k x k pooling."""
    p, k = _size(vc, "model_patch_size", 0) or _size(vc, "patch_size", 16), _size(vc, "pooling_kernel_size", 1)
    side = 2 * k
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    where = torch.stack([xs, ys], -1).reshape(1, side * side, 2)

    def patches(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.randn(b, side * side, c * p * p, generator=g), key: where.expand(b, -1, -1)}

    return "patch positions", patches


def _mask_recipes(c: int, s: int) -> list[tuple[str, Pixels]]:
    """Idefics-style (B, 1, C, S, S) with an all-ones pixel mask (B, 1, S, S), or a tile mask (B, 1)."""

    def masked(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        pv = torch.randn(b, 1, c, s, s, generator=g)
        return {"pixel_values": pv, "pixel_attention_mask": torch.ones(b, 1, s, s, dtype=torch.bool)}

    def tiles(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        pv = torch.randn(b, 1, c, s, s, generator=g)
        return {"pixel_values": pv, "pixel_attention_mask": torch.ones(b, 1, dtype=torch.bool)}

    return [("pixel_attention_mask", masked), ("pixel_attention_mask, per tile", tiles)]


def _counts(model: Any, pixels: dict[str, torch.Tensor]) -> list[int]:
    """Features per image that ``get_image_features`` produces for ``pixels``."""
    from tokred.pipeline._prellm import flatten_features

    base = model.model if hasattr(getattr(model, "model", None), "get_image_features") else model
    enc = hf.encoder_kwargs(base, pixels)
    with torch.no_grad():
        out = hf.image_features(base, enc)
    pooled, injected = hf.pooled(out), hf.injected_features(out)
    if pooled is None and injected:  # every feature injected inside the LLM (Granite 4 Vision): count the first's
        pooled = injected[0][-1] if isinstance(injected[0][0], int) else injected[0]  # (layer, per-image) pairs
    feats, _ = flatten_features(pooled)
    return [int(f.shape[0]) for f in feats]


def generic_tiny_model(
    model_type: str, text_layer_types: list[str] | None = None
) -> tuple[Any, Callable[..., dict[str, torch.Tensor]], str]:
    """Build ``model_type`` tiny from its default config, with an input builder.

    ``text_layer_types`` sets the LLM's ``layer_types`` (one per layer of the tiny depth) instead of the default
    choice (e.g. a hybrid decoder's realistic order, its linear-attention layers first).

    Returns:
        ``(model, make_inputs, recipe)``; ``make_inputs(batch=1, text_len=6, seed=0)`` gives one image per sample,
        left-padded ``input_ids`` with the placeholder count the model produces, ``attention_mask``, the image inputs
        and ``token_type_ids`` / ``mm_token_type_ids`` where the forward takes them.

    Raises:
        NotBuildable: If the config, the model, its image inputs or an unpatched forward cannot be built or run.
    """
    if model_type not in image_text_families():
        raise NotBuildable(f"{model_type!r} is not an image-text-to-text model type of this transformers")
    model = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _build(model_type, text_layer_types)
            name, make = _first_that_runs(model, _recipes(model))
    except NotBuildable as exc:
        raise NotBuildable(str(exc), model) from exc
    except Exception as exc:  # noqa: BLE001 - any failure of the family's own code is the verdict
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        what = "the unpatched model fails on the generic inputs" if model is not None else "cannot build it"
        raise NotBuildable(f"{what}: {type(exc).__name__}: {first}", model) from exc
    return model, make, name


def _special_ids(config: Any) -> set[int]:
    """Every token id the config names (``*_token_id``, ``*_token_index``, ``*_token_ids``), sub-configs included."""
    out: set[int] = set()
    for cfg in [config, *(v for v in vars(config).values() if hasattr(v, "to_dict") and hasattr(v, "model_type"))]:
        for key, value in vars(cfg).items():
            if key.endswith(("_token_id", "_token_index", "_token_ids", "_id")):
                values = value if isinstance(value, (list, tuple)) else [value]
                out |= {int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)}
    return out


def _first_that_runs(model: Any, recipes: list[tuple[str, Pixels]]) -> tuple[str, Any]:
    """The first recipe whose inputs the unpatched model runs on (padded batch of 2); else the first one's error."""
    first: Exception | None = None
    for name, pixels in recipes:
        try:
            make = _make_inputs(model, pixels)
            with torch.no_grad():
                model(**make(batch=2))
            return name, make
        except NotBuildable:
            raise
        except Exception as exc:  # noqa: BLE001 - try the next layout; the first failure is the verdict
            first = first or exc
    assert first is not None
    raise first


#: Families whose ``token_type_ids`` mark a prefix-LM's prompt (0: the bidirectional prefix, images and text; 1: a
#: causal suffix), not the image tokens (Gemma3's 1): their processors give a prompt all zeros.
_PREFIX_LM_TOKEN_TYPES = ("paligemma",)


def _token_types(model: Any, ids: torch.Tensor, image_id: int) -> torch.Tensor:
    """``token_type_ids`` (B, N) as the family's processor gives them for a prompt of ``ids`` (B, N)."""
    if str(getattr(model.config, "model_type", "")) in _PREFIX_LM_TOKEN_TYPES:
        return torch.zeros_like(ids)
    return (ids == image_id).long()


def _make_inputs(model: Any, pixels: Callable[[int, torch.Generator], dict[str, torch.Tensor]]) -> Any:
    image_id = model.config.image_token_id if getattr(model.config, "image_token_id", None) is not None else None
    if image_id is None:
        image_id = getattr(model.config, "image_token_index", None)
    if image_id is None:
        raise NotBuildable("the config names no image_token_id")
    forward = inspect.signature(model.forward).parameters

    special = _special_ids(model.config)
    pool = [i for i in range(10, 400) if i not in special][:90]  # text ids: never a special token's

    def make_inputs(batch: int = 1, text_len: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        kw = pixels(batch, g)
        counts = _counts(model, {k: v for k, v in kw.items()})
        rows = []
        for i, n in enumerate(counts[:batch]):
            pre = [pool[j] for j in torch.randint(0, len(pool), (3,), generator=g).tolist()]
            post = [pool[j] for j in torch.randint(0, len(pool), (max(1, text_len - 3 + (i % 2)),), generator=g)]
            rows.append(pre + [int(image_id)] * n + post)
        width = max(len(r) for r in rows)
        ids = torch.zeros(batch, width, dtype=torch.long)
        mask = torch.zeros(batch, width, dtype=torch.long)
        for i, r in enumerate(rows):  # left padding
            ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
        out = {"input_ids": ids, "attention_mask": mask, **kw}
        if "token_type_ids" in forward:
            out["token_type_ids"] = _token_types(model, ids, image_id)
        if "mm_token_type_ids" in forward:
            out["mm_token_type_ids"] = (ids == image_id).int()
        return out

    return make_inputs
