"""Tiny random-config video models and their inputs, built offline in well under a second (tests only).

Every family that takes video in transformers, with the tiny decoder of `tokred.testing.models` (4 layers, hidden 64,
GQA, vocab 256, fp32, SDPA) and a vision tower whose frames give a 4 x 4 token grid:

* ``llava_onevision`` -- SigLIP + Qwen2; each frame's 8 x 8 patch grid pooled to 4 x 4 by the model, then one
  ``image_newline`` row per video (``pixel_values_videos`` (B, T, 3, 32, 32));
* ``llava_next_video`` -- CLIP + Llama; 8 x 8 patches average-pooled to 4 x 4 by the model's resampler;
* ``qwen2_vl``, ``qwen2_5_vl``, ``qwen3_vl`` -- ``pixel_values_videos`` as flattened patches with
  ``video_grid_thw = (T, 8, 8)``: ``T`` temporal patches of 4 x 4 tokens (merge size 2), ``mm_token_type_ids`` 2 at
  the video tokens. Qwen2/2.5-VL put one ``<vision_start> <video>... <vision_end>`` block per video; Qwen3-VL puts one
  per frame, each after a text timestamp token, as its processor does;
* ``llava`` -- the generic path: the frames as a sequence of images (64 tokens each), one text token between frames.

Token ids as in `tokred.testing.models` (video placeholders 251).
"""

from __future__ import annotations

from typing import Any

import torch

from tokred.testing import models as m

__all__ = ["VIDEO_FAMILIES", "tiny_video_model", "video_tokens_per_frame"]

#: Families with a tiny video builder, in a stable order.
VIDEO_FAMILIES: tuple[str, ...] = ("llava_onevision", "llava_next_video", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava")

_SIZE = 32  # frame side in pixels (patch 4: an 8 x 8 patch grid)


def _build_onevision() -> Any:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    cfg = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**m._clip_vision(patch_size=4)),
        text_config=Qwen2Config(**m.tiny_text_kwargs()),
        image_token_index=m.IMAGE_ID,
        video_token_index=m.VIDEO_ID,
        image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    torch.manual_seed(0)
    return m._finish(LlavaOnevisionForConditionalGeneration(cfg))


def _build_next_video() -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    cfg = LlavaNextVideoConfig(
        vision_config=CLIPVisionConfig(**m._clip_vision(patch_size=4)),
        text_config=LlamaConfig(**m.tiny_text_kwargs()),
        image_token_index=m.IMAGE_ID,
        video_token_index=m.VIDEO_ID,
        image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        spatial_pool_mode="average",
        spatial_pool_stride=2,
    )
    torch.manual_seed(0)
    return m._finish(LlavaNextVideoForConditionalGeneration(cfg))


def tiny_video_model(family: str) -> tuple[Any, Any]:
    """A tiny video model of ``family`` and ``make_inputs(batch=1, frames=4, text_len=6, seed=0) -> dict``.

    Args:
        family: One of :data:`VIDEO_FAMILIES`.

    Returns:
        ``(model, make_inputs)``; the inputs are left-padded (pad id 0), with a different text length per sample.

    Raises:
        KeyError: For an unknown family.
    """
    if family not in VIDEO_FAMILIES:
        raise KeyError(f"unknown tiny video family {family!r}; known: {', '.join(VIDEO_FAMILIES)}")
    if family == "llava_onevision":
        model = _build_onevision()
    elif family == "llava_next_video":
        model = _build_next_video()
    else:
        model, _ = m.tiny_model(family)

    def make_inputs(batch: int = 1, frames: int = 4, text_len: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
        return _inputs(model, family, batch, frames, text_len, seed)

    return model, make_inputs


def video_tokens_per_frame(family: str) -> int:
    """Placeholder rows of one frame for ``family`` (the pooled 4 x 4 grid; 64 for the images of ``llava``)."""
    return 64 if family == "llava" else 16


def _inputs(model: Any, family: str, batch: int, frames: int, text_len: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    per = video_tokens_per_frame(family)
    lengths = m._text_lengths(batch, text_len, seed)
    if family.startswith("qwen"):
        return _qwen_inputs(model, family, batch, frames, lengths, gen)
    if family == "llava":
        rows = [m._prompt([[m.IMAGE_ID] * per] * frames, t, t // 2 + 2) for t in lengths]
        out = m._assemble(rows, gen)
        out["pixel_values"] = m._pixels(gen, batch * frames, 3, 32, 32)
        return out
    extra = 1 if family == "llava_onevision" else 0  # OneVision's newline row after the frames
    rows = [m._prompt([[m.VIDEO_ID] * (per * frames + extra)], t, t // 2 + 2) for t in lengths]
    out = m._assemble(rows, gen)
    out["pixel_values_videos"] = m._pixels(gen, batch, frames, 3, _SIZE, _SIZE)
    return out


def _qwen_inputs(
    model: Any, family: str, batch: int, frames: int, lengths: list[int], gen: torch.Generator
) -> dict[str, torch.Tensor]:
    vc = model.config.vision_config
    grid = (frames, 8, 8)  # (t, h, w) patches of one video: t temporal patches (2 input frames each)
    per = grid[1] * grid[2] // vc.spatial_merge_size**2
    if family == "qwen3_vl":  # one block per frame after a timestamp token, as the Qwen3-VL processor lays it out
        block = [t for _ in range(frames) for t in (-1, m.VISION_START_ID, *[m.VIDEO_ID] * per, m.VISION_END_ID)]
    else:
        block = [m.VISION_START_ID, *[m.VIDEO_ID] * (per * frames), m.VISION_END_ID]
    rows = [m._prompt([block], t, t // 2 + 2) for t in lengths]
    out = m._assemble(rows, gen)
    out["mm_token_type_ids"] = 2 * (out["input_ids"] == m.VIDEO_ID).int()  # 0 text, 2 video
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    out["pixel_values_videos"] = m._pixels(gen, batch * grid[0] * grid[1] * grid[2], patch_dim)
    out["video_grid_thw"] = torch.tensor([grid] * batch)
    return out
