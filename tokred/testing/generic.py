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
    out_hidden_size=64, embed_dim=32,
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


def _shrink(cfg: Any, over: dict[str, int]) -> None:
    """Overwrite the integer size fields ``cfg`` has; keep per-layer type lists as long as the new depth."""
    for key, value in over.items():
        old = getattr(cfg, key, None)
        if isinstance(old, int) and not isinstance(old, bool):
            setattr(cfg, key, value)
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, list) and isinstance(getattr(cfg, "num_hidden_layers", None), int) and types:
        cfg.layer_types = (types * cfg.num_hidden_layers)[: cfg.num_hidden_layers]


def _build(model_type: str) -> Any:
    import transformers as tf
    from transformers import AutoConfig

    cls = getattr(tf, image_text_families()[model_type], None)
    if cls is None:
        raise NotBuildable(f"transformers exports no {image_text_families()[model_type]}")
    cfg = AutoConfig.for_model(model_type)
    subs = {name: sub for name, sub in vars(cfg).items() if isinstance(sub, tf.PretrainedConfig)}
    for name, sub in subs.items():
        _shrink(sub, _TEXT if name in _TEXT_NAMES else _VISION)
    if not any(name in _TEXT_NAMES for name in subs):
        _shrink(cfg, _TEXT)
    torch.manual_seed(0)
    model = cls(cfg).eval()
    try:
        model.set_attn_implementation("sdpa")
    except Exception:  # noqa: BLE001 - families without SDPA keep their default
        pass
    return model


def _vision(model: Any) -> Any:
    return getattr(model.config, "vision_config", None)


def _size(vc: Any, name: str, default: int) -> int:
    value = getattr(vc, name, None)
    if isinstance(value, (list, tuple)):
        value = value[0]
    if isinstance(value, dict):
        value = next(iter(value.values()))
    return int(value) if isinstance(value, int) and value > 0 else default


def _recipe(model: Any) -> tuple[str, Callable[[int, torch.Generator], dict[str, torch.Tensor]]]:
    """The input recipe for the family's image inputs: (name, batch -> pixel kwargs)."""
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
    extra = required - {"pixel_values"}
    if "image_grid_thw" in params:
        p, t, m = _size(vc, "patch_size", 14), _size(vc, "temporal_patch_size", 1), _size(vc, "spatial_merge_size", 2)
        side = 2 * m

        def grid(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
            pv = torch.randn(b * side * side, c * t * p * p, generator=g)
            return {"pixel_values": pv, "image_grid_thw": torch.tensor([[1, side, side]] * b)}

        return "grid_thw", grid
    if extra == {"image_sizes"} or ("image_sizes" in params and "image_sizes" in required):
        vc.image_size = 64

        def sized(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
            return {"pixel_values": torch.randn(b, c, 64, 64, generator=g), "image_sizes": torch.tensor([[64, 64]] * b)}

        return "image_sizes", sized
    s = _size(vc, "image_size", 224)
    if "pixel_attention_mask" in params and not extra - {"pixel_attention_mask"}:

        def masked(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
            pv = torch.randn(b, 1, c, s, s, generator=g)
            return {"pixel_values": pv, "pixel_attention_mask": torch.ones(b, 1, s, s, dtype=torch.bool)}

        return "pixel_attention_mask", masked
    if extra:
        raise NotBuildable(f"get_image_features needs {sorted(extra)}, which no generic recipe builds")

    def plain(b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.randn(b, c, s, s, generator=g)}

    return "plain", plain


def _counts(model: Any, pixels: dict[str, torch.Tensor]) -> list[int]:
    """Features per image that ``get_image_features`` produces for ``pixels``."""
    from tokred.pipeline._prellm import flatten_features

    base = model.model if hasattr(getattr(model, "model", None), "get_image_features") else model
    enc = hf.encoder_kwargs(base, pixels)
    with torch.no_grad():
        feats, _ = flatten_features(hf.pooled(hf.image_features(base, enc)))
    return [int(f.shape[0]) for f in feats]


def generic_tiny_model(model_type: str) -> tuple[Any, Callable[..., dict[str, torch.Tensor]], str]:
    """Build ``model_type`` tiny from its default config, with an input builder.

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
            model = _build(model_type)
            name, pixels = _recipe(model)
            make = _make_inputs(model, pixels)
            with torch.no_grad():
                model(**make(batch=2))  # the unpatched model must run on these inputs, padded batch included
    except NotBuildable as exc:
        raise NotBuildable(str(exc), model) from exc
    except Exception as exc:  # noqa: BLE001 - any failure of the family's own code is the verdict
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        what = "the unpatched model fails on the generic inputs" if model is not None else "cannot build it"
        raise NotBuildable(f"{what}: {type(exc).__name__}: {first}", model) from exc
    return model, make, name


def _make_inputs(model: Any, pixels: Callable[[int, torch.Generator], dict[str, torch.Tensor]]) -> Any:
    image_id = model.config.image_token_id if getattr(model.config, "image_token_id", None) is not None else None
    if image_id is None:
        image_id = getattr(model.config, "image_token_index", None)
    if image_id is None:
        raise NotBuildable("the config names no image_token_id")
    forward = inspect.signature(model.forward).parameters

    def make_inputs(batch: int = 1, text_len: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        kw = pixels(batch, g)
        counts = _counts(model, {k: v for k, v in kw.items()})
        rows = []
        for i, n in enumerate(counts[:batch]):
            pre = torch.randint(10, 100, (3,), generator=g).tolist()
            post = torch.randint(10, 100, (max(1, text_len - 3 + (i % 2)),), generator=g).tolist()
            rows.append(pre + [int(image_id)] * n + post)
        width = max(len(r) for r in rows)
        ids = torch.zeros(batch, width, dtype=torch.long)
        mask = torch.zeros(batch, width, dtype=torch.long)
        for i, r in enumerate(rows):  # left padding
            ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
        out = {"input_ids": ids, "attention_mask": mask, **kw}
        if "token_type_ids" in forward:
            out["token_type_ids"] = (ids == image_id).long()
        if "mm_token_type_ids" in forward:
            out["mm_token_type_ids"] = (ids == image_id).int()
        return out

    return make_inputs
