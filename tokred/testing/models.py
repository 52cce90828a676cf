"""Tiny random-config multimodal models of every family tokred supports, built offline in well under a second.

They exist for tests (tokred's own and plugin authors'): every model has real transformers classes, a vision tower,
a projector and a 4-layer decoder with grouped-query attention (hidden 64, 4 heads, 2 KV heads, vocab 256), fp32 and
SDPA attention. Each family comes with a function that builds matching inputs: ``input_ids`` with the placeholder
counts the model expects, ``pixel_values`` and the family's side inputs (``image_sizes``, ``image_grid_thw`` with
``mm_token_type_ids``, ``pixel_attention_mask``, ``token_type_ids``), for any batch size with left padding and a
different text length per sample.

Example:
    >>> from tokred.testing.models import list_tiny_models, tiny_model
    >>> "llava" in list_tiny_models()
    True
    >>> model, make_inputs = tiny_model("llava")
    >>> inputs = make_inputs(batch=2)
    >>> sorted(inputs)
    ['attention_mask', 'input_ids', 'pixel_values']
    >>> int((inputs["input_ids"][0] == model.config.image_token_id).sum())
    64

Token ids: 0 is padding, 1..199 are plain text, and the special tokens of every family live in 240..255.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["TinyInputs", "TinyModelSpec", "list_tiny_models", "tiny_model", "tiny_text_kwargs"]

VOCAB = 256
PAD_ID = 0
IMAGE_ID = 250
VIDEO_ID = 251
VISION_START_ID = 252
VISION_END_ID = 253
BOI_ID = 246  # Gemma3 begin/end of image
EOI_ID = 247
FAKE_AROUND_ID = 248  # Idefics3 <fake_token_around_image>
GLOBAL_IMG_ID = 249  # Idefics3 <global-img>

TinyInputs = Callable[..., dict[str, torch.Tensor]]


def tiny_text_kwargs(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of the tiny decoder config shared by every family (override any of them)."""
    kw: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=PAD_ID,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    kw.update(overrides)
    return kw


def _clip_vision(**extra: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4
    )
    kw.update(extra)
    return kw


# ------------------------------------------------------------------------------------------------- inputs


def _text_lengths(batch: int, base: int, seed: int) -> list[int]:
    """A different text length per sample (base, base+2, base-1, ...), all >= 1."""
    offsets = [0, 2, -1, 3, 1, -2]
    return [max(1, base + offsets[(i + seed) % len(offsets)]) for i in range(batch)]


def _assemble(rows: list[list[int]], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Left-pad token rows with ``PAD_ID``; negative entries are replaced by random text tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)  # (B, L)
    mask = torch.zeros(len(rows), width, dtype=torch.long)  # (B, L)
    for b, row in enumerate(rows):
        t = torch.tensor(row, dtype=torch.long)
        rand = torch.randint(3, 200, t.shape, generator=gen)
        t = torch.where(t < 0, rand, t)
        ids[b, width - len(row) :] = t
        mask[b, width - len(row) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _prompt(image_blocks: list[list[int]], prefix: int, suffix: int) -> list[int]:
    """``prefix`` text tokens, the image blocks separated by one text token, ``suffix`` text tokens (-1 = random)."""
    row = [-1] * prefix
    for i, block in enumerate(image_blocks):
        if i:
            row.append(-1)
        row.extend(block)
    return row + [-1] * suffix


def _pixels(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


@dataclass
class TinyModelSpec:
    """A tiny model family: how to build the model and its inputs.

    Attributes:
        family: Short name used by [`tiny_model`][tokred.testing.models.tiny_model].
        build: ``build(**config_overrides) -> model``.
        inputs: ``inputs(model, batch=1, num_images=1, text_len=6, seed=0) -> dict`` of forward kwargs.
        description: One line for listings.
    """

    family: str
    build: Callable[..., Any]
    inputs: Callable[..., dict[str, torch.Tensor]]
    description: str


def _finish(model: Any) -> Any:
    model.eval()
    model.set_attn_implementation("sdpa")
    return model


def _split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split overrides into text-config ones (``text_*`` or known text keys) and top-level ones."""
    text_keys = set(tiny_text_kwargs()) | {"sliding_window", "layer_types", "rope_parameters"}
    text = {k.removeprefix("text_"): v for k, v in overrides.items() if k.startswith("text_") or k in text_keys}
    top = {k: v for k, v in overrides.items() if not (k.startswith("text_") or k in text_keys)}
    return text, top


# ------------------------------------------------------------------------------------------------- LLaVA-1.5


def _build_llava(**overrides: Any) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text, top = _split_overrides(overrides)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**_clip_vision()),
        text_config=LlamaConfig(**tiny_text_kwargs(**text)),
        image_token_index=IMAGE_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        **top,
    )
    torch.manual_seed(0)
    return _finish(LlavaForConditionalGeneration(cfg))


def _llava_inputs(model: Any, batch: int = 1, num_images: int = 1, text_len: int = 6, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    n = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2  # CLS dropped
    rows = [_prompt([[IMAGE_ID] * n] * num_images, t, t // 2 + 2) for t in _text_lengths(batch, text_len, seed)]
    out = _assemble(rows, gen)
    size = model.config.vision_config.image_size
    out["pixel_values"] = _pixels(gen, batch * num_images, 3, size, size)
    return out


# ------------------------------------------------------------------------------------- LLaVA-NeXT / OneVision


def _anyres_counts(model: Any, image_size: tuple[int, int]) -> tuple[int, int]:
    """(crops incl. the base image, placeholder tokens) of one anyres image, read from the model itself."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    cfg = model.config
    crops = image_size_to_num_patches(image_size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
    side = cfg.vision_config.image_size
    pv = torch.zeros(1, crops, 3, side, side)
    from tokred.adapters import hf

    with torch.no_grad():
        feats = hf.image_features(model.model, {"pixel_values": pv, "image_sizes": torch.tensor([image_size])})
    return crops, int(hf.pooled(feats)[0].shape[0])


def _anyres_inputs(model: Any, batch: int = 1, num_images: int = 1, text_len: int = 6, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    image_size = (32, 64)  # two crops side by side + the base image
    crops, n = _anyres_counts(model, image_size)
    rows = [_prompt([[IMAGE_ID] * n] * num_images, t, t // 2 + 2) for t in _text_lengths(batch, text_len, seed)]
    out = _assemble(rows, gen)
    side = model.config.vision_config.image_size
    if num_images != 1:
        raise ValueError("the tiny anyres builders take one image per sample (pixel_values is (B, crops, 3, H, W))")
    out["pixel_values"] = _pixels(gen, batch, crops, 3, side, side)
    out["image_sizes"] = torch.tensor([image_size] * batch)
    return out


def _build_llava_next(**overrides: Any) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    text, top = _split_overrides(overrides)
    cfg = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**_clip_vision(patch_size=8)),
        text_config=LlamaConfig(**tiny_text_kwargs(**text)),
        image_token_index=IMAGE_ID,
        image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        **top,
    )
    torch.manual_seed(0)
    return _finish(LlavaNextForConditionalGeneration(cfg))


def _build_llava_onevision(**overrides: Any) -> Any:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    text, top = _split_overrides(overrides)
    cfg = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**_clip_vision(patch_size=8)),
        text_config=Qwen2Config(**tiny_text_kwargs(**text)),
        image_token_index=IMAGE_ID,
        video_token_index=VIDEO_ID,
        image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        **top,
    )
    torch.manual_seed(0)
    return _finish(LlavaOnevisionForConditionalGeneration(cfg))


# ------------------------------------------------------------------------------------------- Qwen2/2.5/3-VL


def _qwen_vision(kind: str) -> dict[str, Any]:
    if kind == "qwen2_vl":
        return dict(
            depth=2,
            embed_dim=32,
            hidden_size=64,
            num_heads=2,
            mlp_ratio=2,
            patch_size=2,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        )
    # Qwen2.5-VL and Qwen3-VL share these and differ in window attention vs DeepStack.
    common: dict[str, Any] = dict(
        depth=2,
        hidden_size=32,
        out_hidden_size=64,
        intermediate_size=64,
        num_heads=2,
        patch_size=2,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
    )
    if kind == "qwen2_5_vl":
        return {**common, "window_size": 8, "fullatt_block_indexes": [1]}
    return {**common, "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1]}


def _build_qwen(kind: str, **overrides: Any) -> Any:
    import transformers as tf

    text, top = _split_overrides(overrides)
    names = {"qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2_5_VL", "qwen3_vl": "Qwen3VL"}[kind]
    text_cfg = tiny_text_kwargs(**text)
    text_cfg.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    if kind == "qwen3_vl":
        text_cfg["head_dim"] = 16
        text_cfg["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
        }
    cfg = getattr(tf, f"{names}Config")(
        vision_config=_qwen_vision(kind),
        text_config=text_cfg,
        image_token_id=IMAGE_ID,
        video_token_id=VIDEO_ID,
        vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID,
        **top,
    )
    torch.manual_seed(0)
    return _finish(getattr(tf, f"{names}ForConditionalGeneration")(cfg))


def _qwen_inputs(model: Any, batch: int = 1, num_images: int = 1, text_len: int = 6, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    vc = model.config.vision_config
    grid = (1, 8, 8)  # (t, h, w) patches of one image
    n = grid[0] * grid[1] * grid[2] // vc.spatial_merge_size**2
    block = [VISION_START_ID] + [IMAGE_ID] * n + [VISION_END_ID]
    rows = [_prompt([block] * num_images, t, t // 2 + 2) for t in _text_lengths(batch, text_len, seed)]
    out = _assemble(rows, gen)
    out["mm_token_type_ids"] = (out["input_ids"] == IMAGE_ID).int()  # 0 text, 1 image
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    out["pixel_values"] = _pixels(gen, batch * num_images * grid[0] * grid[1] * grid[2], patch_dim)
    out["image_grid_thw"] = torch.tensor([grid] * (batch * num_images))
    return out


# ------------------------------------------------------------------------------------------- Idefics3 / SmolVLM


def _build_idefics(kind: str, **overrides: Any) -> Any:
    import transformers as tf

    text, top = _split_overrides(overrides)
    prefix = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}[kind]
    cfg = getattr(tf, f"{prefix}Config")(
        vision_config=_clip_vision(),
        text_config=tiny_text_kwargs(**text),
        image_token_id=IMAGE_ID,
        scale_factor=2,
        **top,
    )
    torch.manual_seed(0)
    return _finish(getattr(tf, f"{prefix}ForConditionalGeneration")(cfg))


def _idefics_inputs(model: Any, batch: int = 1, num_images: int = 1, text_len: int = 6, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    vc = model.config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2 // model.config.scale_factor**2
    block = [FAKE_AROUND_ID, GLOBAL_IMG_ID] + [IMAGE_ID] * n + [FAKE_AROUND_ID]
    rows = [_prompt([block] * num_images, t, t // 2 + 2) for t in _text_lengths(batch, text_len, seed)]
    out = _assemble(rows, gen)
    out["pixel_values"] = _pixels(gen, batch, num_images, 3, vc.image_size, vc.image_size)
    out["pixel_attention_mask"] = torch.ones(batch, num_images, vc.image_size, vc.image_size, dtype=torch.bool)
    return out


# ------------------------------------------------------------------------------------------------- InternVL


def _build_internvl(**overrides: Any) -> Any:
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    text, top = _split_overrides(overrides)
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=[32, 32],
        patch_size=[4, 4],
    )
    cfg = InternVLConfig(
        vision_config=vision,
        text_config=dict(model_type="qwen2", **tiny_text_kwargs(**text)),
        image_token_id=IMAGE_ID,
        downsample_ratio=0.5,
        **top,
    )
    torch.manual_seed(0)
    return _finish(InternVLForConditionalGeneration(cfg))


def _internvl_inputs(model: Any, batch: int = 1, num_images: int = 1, text_len: int = 6, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    vc = model.config.vision_config
    side = vc.image_size[0] // vc.patch_size[0]
    n = int(side * side * model.config.downsample_ratio**2)
    block = [VISION_START_ID] + [IMAGE_ID] * n + [VISION_END_ID]
    rows = [_prompt([block] * num_images, t, t // 2 + 2) for t in _text_lengths(batch, text_len, seed)]
    out = _assemble(rows, gen)
    out["pixel_values"] = _pixels(gen, batch * num_images, 3, vc.image_size[0], vc.image_size[1])
    return out


# ------------------------------------------------------------------------------------------------- Gemma3


def _build_gemma3(**overrides: Any) -> Any:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text, top = _split_overrides(overrides)
    text_cfg = tiny_text_kwargs(**{"head_dim": 16, "sliding_window": 512, **text})
    cfg = Gemma3Config(
        text_config=text_cfg,
        vision_config=_clip_vision(),
        mm_tokens_per_image=16,
        image_token_index=IMAGE_ID,
        boi_token_index=BOI_ID,
        eoi_token_index=EOI_ID,
        **top,
    )
    torch.manual_seed(0)
    return _finish(Gemma3ForConditionalGeneration(cfg))


def _gemma3_inputs(model: Any, batch: int = 1, num_images: int = 1, text_len: int = 6, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    n = model.config.mm_tokens_per_image
    block = [BOI_ID] + [IMAGE_ID] * n + [EOI_ID]
    rows = [_prompt([block] * num_images, t, t // 2 + 2) for t in _text_lengths(batch, text_len, seed)]
    out = _assemble(rows, gen)
    out["token_type_ids"] = (out["input_ids"] == IMAGE_ID).long()
    size = model.config.vision_config.image_size
    out["pixel_values"] = _pixels(gen, batch * num_images, 3, size, size)
    return out


# ------------------------------------------------------------------------------------------------- registry

_SPECS: dict[str, TinyModelSpec] = {
    "llava": TinyModelSpec("llava", _build_llava, _llava_inputs, "LLaVA-1.5 (CLIP + Llama), 64 tokens per image"),
    "llava_next": TinyModelSpec(
        "llava_next", _build_llava_next, _anyres_inputs, "LLaVA-NeXT (CLIP anyres + Llama), newline tokens"
    ),
    "llava_onevision": TinyModelSpec(
        "llava_onevision", _build_llava_onevision, _anyres_inputs, "LLaVA-OneVision (SigLIP anyres + Qwen2)"
    ),
    "qwen2_vl": TinyModelSpec(
        "qwen2_vl", lambda **o: _build_qwen("qwen2_vl", **o), _qwen_inputs, "Qwen2-VL (M-RoPE), 16 tokens per image"
    ),
    "qwen2_5_vl": TinyModelSpec(
        "qwen2_5_vl", lambda **o: _build_qwen("qwen2_5_vl", **o), _qwen_inputs, "Qwen2.5-VL (M-RoPE, window attn)"
    ),
    "qwen3_vl": TinyModelSpec(
        "qwen3_vl", lambda **o: _build_qwen("qwen3_vl", **o), _qwen_inputs, "Qwen3-VL (DeepStack, M-RoPE)"
    ),
    "idefics3": TinyModelSpec(
        "idefics3", lambda **o: _build_idefics("idefics3", **o), _idefics_inputs, "Idefics3 (pixel shuffle + Llama)"
    ),
    "smolvlm": TinyModelSpec(
        "smolvlm", lambda **o: _build_idefics("smolvlm", **o), _idefics_inputs, "SmolVLM (pixel shuffle + Llama)"
    ),
    "internvl": TinyModelSpec("internvl", _build_internvl, _internvl_inputs, "InternVL (pixel shuffle + Qwen2)"),
    "gemma3": TinyModelSpec(
        "gemma3", _build_gemma3, _gemma3_inputs, "Gemma3 (SigLIP, bidirectional image attention, sliding window)"
    ),
}


def list_tiny_models() -> list[str]:
    """Families with a tiny builder, in a stable order."""
    return list(_SPECS)


def tiny_model(family: str, **overrides: Any) -> tuple[Any, TinyInputs]:
    """Build a tiny random-config model of ``family`` (seeded, eval mode, fp32, SDPA) and its input builder.

    Args:
        family: One of [`list_tiny_models`][tokred.testing.models.list_tiny_models].
        **overrides: Config overrides. Text-config keys (``num_hidden_layers``, ``sliding_window``, ... or any key
            prefixed with ``text_``) go to the decoder config, the rest to the top-level config.

    Returns:
        ``(model, make_inputs)`` where ``make_inputs(batch=1, num_images=1, text_len=6, seed=0)`` returns the forward
        kwargs as a dict of tensors: ``input_ids`` (B, L) left-padded with 0, ``attention_mask`` (B, L) and the
        family's image inputs. Samples get different text lengths so that ``batch > 1`` exercises padding.

    Raises:
        KeyError: For an unknown family (the message lists the known ones).
    """
    if family not in _SPECS:
        raise KeyError(f"unknown tiny model family {family!r}; known: {', '.join(_SPECS)}")
    spec = _SPECS[family]
    model = spec.build(**overrides)

    def make_inputs(batch: int = 1, num_images: int = 1, text_len: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
        return spec.inputs(model, batch=batch, num_images=num_images, text_len=text_len, seed=seed)

    return model, make_inputs
