"""Family adapters: small overrides of the generic adapter for what a family does differently.

Tested on every transformers in the declared range (5.18 to 5.24; ``models/qwen2_vl``, ``models/qwen2_5_vl``,
``models/qwen3_vl``, ``models/gemma3``, ``models/llava_next``, ``models/llava_onevision``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from tokred.adapters import hf
from tokred.adapters.base import ModelAdapter, VideoLayout


def _model_type(model: Any) -> str:
    return str(getattr(model.config, "model_type", ""))


class AnyresAdapter(ModelAdapter):
    """LLaVA-NeXT and LLaVA-OneVision: anyres tiles packed with ``image_newline`` rows.

    The newline rows share the image placeholder id but carry no visual content: they are the learned
    ``image_newline`` vector, inserted at the end of every row of the unpadded tile grid (and, for OneVision, once
    after each image). tokred treats them as **text-like**: they are never scored, pruned or merged, and a pre-LLM
    merger sees only the content rows of each image (its outputs are put back in their first source's place, between
    the kept newline rows). They are recognised by value: a row equal to ``image_newline`` exactly.
    """

    name: ClassVar[str] = "llava-anyres"
    families: ClassVar[str] = "LLaVA-NeXT, LLaVA-OneVision"
    model_types: ClassVar[tuple[str, ...]] = ("llava_next", "llava_onevision")
    has_text_like_rows: ClassVar[bool] = True

    @classmethod
    def matches(cls, model: Any) -> bool:
        return _model_type(model) in cls.model_types and super().matches(model)

    def text_like_rows(self, features: torch.Tensor) -> torch.Tensor | None:
        newline = getattr(self.base, "image_newline", None)
        if newline is None:
            return None
        return (features == newline.to(features)).all(dim=-1)  # (n,)

    def feature_grids(self, enc_kwargs: dict[str, Any], counts: Sequence[int]) -> list[tuple[int, int] | None]:
        return [None] * len(counts)  # the tiles plus the base image are not one grid

    def video_layouts(self, enc_kwargs: dict[str, Any], counts: Sequence[int]) -> list[VideoLayout]:
        """OneVision: every frame's pooled grid, frame-major, then one ``image_newline`` row per video."""
        layouts = super().video_layouts(enc_kwargs, counts)
        if self.model_type != "llava_onevision":
            return layouts
        out = []
        for lay, n in zip(layouts, counts):
            per = (n - 1) // lay.frames
            side = int(round(per**0.5))
            out.append(VideoLayout(lay.frames, per, (side, side) if side * side == per else None))
        return out


class QwenVLAdapter(ModelAdapter):
    """Qwen2-VL, Qwen2.5-VL and Qwen3-VL: grids from ``image_grid_thw``, pooled grids re-numbered.

    After a pre-LLM reduction the shortened sequence no longer matches ``image_grid_thw``, so the adapter passes
    explicit 3-row positions: with a merger that keeps a grid (pooling) they come from ``get_rope_index`` on the
    shortened ids and the pooled grid; otherwise (the generic rule) every kept or merged token takes the M-RoPE
    position of its first source token (text keeps its own), computed on the original sequence. Qwen3-VL's DeepStack
    features are reduced and gathered with the visual tokens by the generic pipeline.
    """

    name: ClassVar[str] = "qwen-vl"
    families: ClassVar[str] = "Qwen2-VL, Qwen2.5-VL, Qwen3-VL"
    model_types: ClassVar[tuple[str, ...]] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")

    @classmethod
    def matches(cls, model: Any) -> bool:
        return _model_type(model) in cls.model_types and super().matches(model)

    def feature_grids(self, enc_kwargs: dict[str, Any], counts: Sequence[int]) -> list[tuple[int, int] | None]:
        thw = enc_kwargs.get("image_grid_thw")
        if thw is None:
            return super().feature_grids(enc_kwargs, counts)
        merge = int(self.config.vision_config.spatial_merge_size)
        grids: list[tuple[int, int] | None] = []
        for (t, h, w), n in zip(thw.tolist(), counts):
            rows, cols = int(h) // merge, int(w) // merge
            grids.append((rows, cols) if t == 1 and rows * cols == n else None)
        return grids

    def video_layouts(self, enc_kwargs: dict[str, Any], counts: Sequence[int]) -> list[VideoLayout]:
        """A video of grid (t, h, w) is ``t`` temporal patches of ``(h / merge) x (w / merge)`` tokens each."""
        thw = enc_kwargs[hf.VIDEO_GRID]
        merge = int(self.config.vision_config.spatial_merge_size)
        return [VideoLayout(int(t), (h // merge) * (w // merge), (h // merge, w // merge)) for t, h, w in thw.tolist()]

    def prellm_position_ids(
        self,
        kwargs: dict[str, Any],
        enc_kwargs: dict[str, Any],
        src_index: torch.Tensor,
        valid: torch.Tensor,
        new_grids: list[tuple[int, int] | None],
    ) -> torch.Tensor | None:
        ids, mm = kwargs["input_ids"], kwargs.get("mm_token_type_ids")
        if mm is None:
            mm = self.mm_token_types(ids)
        thw = enc_kwargs.get("image_grid_thw")
        mask = kwargs.get("attention_mask")
        video = enc_kwargs.get(hf.VIDEO_GRID) is not None  # with video, survivors keep their original positions
        if thw is not None and not video and new_grids and all(g is not None for g in new_grids):
            merge = int(self.config.vision_config.spatial_merge_size)
            new_thw = torch.tensor(
                [
                    [int(t), g[0] * merge, g[1] * merge]
                    for (t, _, _), g in zip(thw.tolist(), new_grids)
                    if g is not None
                ],
                dtype=thw.dtype,
                device=thw.device,
            )
            new_ids = torch.where(valid, ids.gather(1, src_index), 0)
            new_mm = torch.where(valid, mm.gather(1, src_index), 0)
            new_mask = valid.long() if mask is None else (mask.gather(1, src_index) * valid).long()
            pos, _ = self.base.get_rope_index(
                new_ids, mm_token_type_ids=new_mm, image_grid_thw=new_thw, attention_mask=new_mask
            )
            return pos  # (3, B, N')
        return super().prellm_position_ids(kwargs, enc_kwargs, src_index, valid, new_grids)


class Gemma3Adapter(ModelAdapter):
    """Gemma3 (and Gemma 4 unified): bidirectional attention inside each image span (from ``token_type_ids`` /
    ``mm_token_type_ids``) and sliding-window layers.

    The bidirectional blocks are materialised 4-D masks, which the in-LLM stage gathers (rows and columns) with the
    kept indices, so kept image tokens still see each other both ways. A pre-LLM reduction shortens
    ``token_type_ids`` with ``input_ids``. Sliding-window layers work while the whole sequence fits in the window.
    """

    name: ClassVar[str] = "gemma3"
    families: ClassVar[str] = "Gemma3, Gemma 4 unified"
    # ShieldGemma 2 is a Gemma3 model; Gemma 4 unified has the same image spans and masks
    model_types: ClassVar[tuple[str, ...]] = ("gemma3", "shieldgemma2", "gemma4_unified")
    handles_bidirectional: ClassVar[bool] = True

    @classmethod
    def matches(cls, model: Any) -> bool:
        return _model_type(model) in cls.model_types and super().matches(model)

    def feature_grids(self, enc_kwargs: dict[str, Any], counts: Sequence[int]) -> list[tuple[int, int] | None]:
        return super().feature_grids(enc_kwargs, counts)  # mm_tokens_per_image is a square


class PaliGemmaAdapter(ModelAdapter):
    """PaliGemma and PaliGemma 2: a prefix-LM, whose whole prompt prefix (``token_type_ids == 0``: the image tokens
    and the prompt text) attends bidirectionally, and whose generated suffix (``token_type_ids == 1``) is causal.

    The model builds the prefix block itself from ``token_type_ids`` in every prefill, as a materialised 4-D mask:
    the in-LLM stage gathers it (rows and columns) with the kept indices, so the kept prefix still sees itself both
    ways, and a pre-LLM reduction shortens ``token_type_ids`` with ``input_ids`` (the survivors stay in the prefix).
    """

    name: ClassVar[str] = "paligemma"
    families: ClassVar[str] = "PaliGemma, PaliGemma 2"
    model_types: ClassVar[tuple[str, ...]] = ("paligemma",)
    handles_bidirectional: ClassVar[bool] = True
    bidirectional_prompt: ClassVar[bool] = True

    @classmethod
    def matches(cls, model: Any) -> bool:
        return _model_type(model) in cls.model_types and super().matches(model)

    def generated_token_types(self) -> dict[str, int]:
        """Generated tokens are the causal suffix (what PaliGemma's ``generate()`` appends to ``token_type_ids``)."""
        return {**super().generated_token_types(), "token_type_ids": 1}
