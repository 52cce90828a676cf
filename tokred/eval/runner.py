"""Model runners: turn dataset samples into model inputs and generated ids back into answers.

A runner hides the model family's prompt format from the evaluation code. ``HFRunner`` serves any
image-text-to-text model with a processor whose chat template places the image (the reference model, or a
checkpoint given with ``--model``); ``TinyRunner`` wraps a tiny random-config model of ``tokred.testing.models`` so
that the comparison machinery can be tested offline in seconds (its answers are meaningless).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from tokred.eval.datasets import Sample

INSTRUCTION = "Answer with one word."


class Runner(Protocol):
    """What the comparison needs from a model."""

    name: str
    model: Any

    def encode(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        """A left-padded batch of model inputs for ``samples``."""
        ...

    def decode(self, generated: torch.Tensor) -> list[str]:
        """Answers from the generated ids only (prompt excluded), shape (B, T)."""
        ...

    @property
    def image_token_id(self) -> int:
        """Placeholder id of visual tokens in ``input_ids``."""
        ...

    @property
    def image_grid(self) -> tuple[int, int] | None:
        """Token grid of one image (rows, cols), when the tokens of an image form one."""
        ...

    @property
    def frame_grid(self) -> tuple[int, int] | None:
        """Token grid of one video frame (frames may enter at another resolution than images)."""
        ...


def question_text(sample: Sample) -> str:
    """The user turn of the prompt: the question plus the one-word instruction."""
    return f"{sample.question} {INSTRUCTION}"


def first_word(text: str) -> str:
    """The first word of a generation (answers are one word; trailing text is ignored)."""
    words = text.strip().split()
    return words[0].strip(".,;:!?\"'") if words else ""


def image_token_id_of(model: Any) -> int:
    """The image placeholder id of a transformers multimodal model."""
    cfg = model.config
    for key in ("image_token_id", "image_token_index"):
        value = getattr(cfg, key, None)
        if value is not None:
            return int(value)
    from tokred.errors import UnsupportedModelError

    raise UnsupportedModelError(
        f"{type(model).__name__} has no image_token_id in its config, so tokred cannot find its visual tokens"
    )


class _ModelFacts:
    """``image_token_id`` and ``image_grid`` of a runner, read from its ``model``."""

    model: Any

    @property
    def image_token_id(self) -> int:
        return image_token_id_of(self.model)

    @property
    def image_grid(self) -> tuple[int, int] | None:
        return _square_grid(self.model)

    @property
    def frame_grid(self) -> tuple[int, int] | None:
        return self.image_grid


@dataclass
class HFRunner(_ModelFacts):
    """Runner for a transformers model and its processor (chat template with an image slot).

    Attributes:
        frame_size: Pixel side (square) at which the frames of a video sample are processed, or ``None`` for the
            processor's own image size. The reference model watches video at 112 px (an 8 x 8 grid per frame), the
            way video LLMs spend fewer tokens per frame than per image.
    """

    model: Any
    processor: Any
    name: str = "model"
    frame_size: int | None = None

    @property
    def image_grid(self) -> tuple[int, int] | None:
        """Token grid of the images this runner's processor produces: the processed size (centre crop, else the
        resize target) over the tower's patch size; the tower config's own size when the processor does not say.

        The tower's config may name another resolution than the processor uses (the reference model's DINOv2 says
        518 px, its processor crops 224 px: a 16 x 16 grid, not 37 x 37)."""
        vision = getattr(self.model.config, "vision_config", None)
        patch = getattr(vision, "patch_size", None)
        size = _processed_size(getattr(self.processor, "image_processor", None))
        if size is not None and isinstance(patch, int) and patch > 0:
            return size[0] // patch, size[1] // patch
        return _square_grid(self.model)

    @property
    def frame_grid(self) -> tuple[int, int] | None:
        """Token grid of one video frame: ``frame_size`` over the tower's patch size, else the image grid."""
        patch = getattr(getattr(self.model.config, "vision_config", None), "patch_size", None)
        if self.frame_size is None or not isinstance(patch, int) or patch <= 0:
            return self.image_grid
        return self.frame_size // patch, self.frame_size // patch

    def encode(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        prompts = [self._prompt(s) for s in samples]
        self.processor.tokenizer.padding_side = "left"
        images = [f for s in samples for f in (s.frames or [s.image])]  # a video's frames enter as a sequence of images
        batch = self.processor(text=prompts, images=images, return_tensors="pt", padding=True, **self._sizes(samples))
        return {k: v.to(self.model.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def _sizes(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """Processor size overrides for a batch of video samples (none for images or without ``frame_size``)."""
        video = [s.frames is not None for s in samples]
        if self.frame_size is None or not any(video):
            return {}
        if not all(video):
            raise ValueError("a batch mixes images and video clips, which enter at different resolutions")
        side = self.frame_size
        return {"size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side}}

    def _prompt(self, sample: Sample) -> str:
        slots: list[dict[str, str]] = [{"type": "image"} for _ in sample.frames or [sample.image]]
        messages = [{"role": "user", "content": [*slots, {"type": "text", "text": question_text(sample)}]}]
        return str(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

    def decode(self, generated: torch.Tensor) -> list[str]:
        texts = self.processor.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [first_word(t) for t in texts]


@dataclass
class TinyRunner(_ModelFacts):
    """Runner over a tiny random LLaVA-style model (tests only: answers are digits derived from token ids)."""

    family: str = "llava"
    name: str = "tiny-llava"

    def __post_init__(self) -> None:
        from tokred.testing.models import tiny_model

        self.model, self._make_inputs = tiny_model(self.family)

    def encode(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        rows = [self._make_inputs(batch=1, seed=_stable_seed(s.id)) for s in samples]
        return _left_pad(rows)

    def decode(self, generated: torch.Tensor) -> list[str]:
        return [str(int(row[0]) % 5) for row in generated]


def _processed_size(image_processor: Any) -> tuple[int, int] | None:
    """(height, width) of the images an image processor outputs, when its settings say (crop, else fixed size)."""
    if image_processor is None:
        return None
    for flag, attr in (("do_center_crop", "crop_size"), ("do_resize", "size")):
        value = getattr(image_processor, attr, None)
        if getattr(image_processor, flag, False) and value is not None:
            get = value.get if isinstance(value, dict) else lambda k, v=value: getattr(v, k, None)
            h, w = get("height"), get("width")
            if isinstance(h, int) and isinstance(w, int):
                return h, w
    return None


def _square_grid(model: Any) -> tuple[int, int] | None:
    """Token grid of a tower that cuts a square image into square patches (no class token in the grid)."""
    vision = getattr(model.config, "vision_config", None)
    size, patch = getattr(vision, "image_size", None), getattr(vision, "patch_size", None)
    if not size or not patch:
        return None
    side = int(size) // int(patch)
    return side, side


def _stable_seed(sample_id: str) -> int:
    return int(hashlib.sha256(sample_id.encode()).hexdigest()[:8], 16)


def _left_pad(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate single-sample inputs, left-padding ``input_ids``/``attention_mask`` (pad id 0)."""
    width = max(int(r["input_ids"].shape[1]) for r in rows)
    out: dict[str, list[torch.Tensor]] = {}
    for r in rows:
        pad = width - int(r["input_ids"].shape[1])
        for key, value in r.items():
            if key in ("input_ids", "attention_mask"):
                value = torch.nn.functional.pad(value, (pad, 0), value=0)
            out.setdefault(key, []).append(value)
    return {k: torch.cat(v, dim=0) for k, v in out.items()}
