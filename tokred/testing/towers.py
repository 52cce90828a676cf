"""Vision-tower test helpers: a synthetic [`TowerContext`][tokred.TowerContext] and tiny LLaVA models whose tower is a
CLIP, DINOv2 or SigLIP encoder of a chosen depth (offline, seeded, < 1 s).

Example:
    >>> from tokred.testing.towers import synthetic_tower
    >>> x, tower = synthetic_tower(batch=2, patches=16, channels=8)
    >>> x.shape, tower.cls_attention.shape, tower.features.shape
    (torch.Size([2, 16, 8]), torch.Size([2, 2, 2, 17]), torch.Size([2, 17, 12]))
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from tokred._components import TowerContext

Tower = Literal["clip", "dinov2", "siglip"]


def synthetic_tower(
    batch: int = 2, patches: int = 16, channels: int = 8, *, layers: int = 4, heads: int = 2, seed: int = 0
) -> tuple[torch.Tensor, TowerContext]:
    """Projected features ``x`` (B, n, C) and a tower context consistent with them.

    The tower has ``layers`` layers, the feature layer is ``layers - 2``, class-token rows are given for the last two
    layers up to it, keys have ``heads`` heads of width 4, the pre-projector features width 12, and ``x`` is the
    context's ``project`` (a fixed random linear map) applied to the patch rows of ``features``.
    """
    g = torch.Generator().manual_seed(seed)
    t = patches + 1
    proj = torch.nn.Linear(12, channels)
    with torch.no_grad():
        proj.weight.copy_(torch.randn(channels, 12, generator=g))
        proj.bias.copy_(torch.randn(channels, generator=g))
    feature_layer = max(0, layers - 2)
    cls_layers = tuple(range(max(0, feature_layer - 1), feature_layer + 1))
    logits = torch.randn(batch, len(cls_layers), heads, t, generator=g)
    features = torch.randn(batch, t, 12, generator=g)
    tower = TowerContext(
        layers=cls_layers,
        feature_layer=feature_layer,
        num_layers=layers,
        cls_attention=logits.softmax(-1),
        keys=torch.randn(batch, heads, t, 4, generator=g),
        features=features,
        project=proj,
    )
    with torch.no_grad():
        x = proj(features[:, 1:])
    return x, tower


def tiny_llava_with_tower(
    tower: Tower = "clip", *, layers: int = 4, feature_layer: int | list[int] = -2, seed: int = 0
) -> Any:
    """A tiny LLaVA whose vision tower is ``tower`` with ``layers`` layers (32 px images, 4 px patches: 64 patches;
    DINOv2 14 px patches of 56 px images: 16 patches), SDPA attention everywhere, eval mode."""
    from transformers import (
        CLIPVisionConfig,
        Dinov2Config,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        SiglipVisionConfig,
    )

    from tokred.testing.models import IMAGE_ID, tiny_text_kwargs

    common: dict[str, Any] = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2)
    vision: Any
    if tower == "clip":
        vision = CLIPVisionConfig(**common, image_size=32, patch_size=4)
    elif tower == "siglip":
        vision = SiglipVisionConfig(**common, image_size=32, patch_size=4)
    else:
        vision = Dinov2Config(**common, image_size=56, patch_size=14)
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(**tiny_text_kwargs()),
        image_token_index=IMAGE_ID,
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy="full" if tower == "siglip" else "default",  # SigLIP has no class token
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.set_attn_implementation("sdpa")
    return model


def tiny_llava_inputs(model: Any, batch: int = 1, text_len: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded prompts with one image each (different text lengths per sample) for ``tiny_llava_with_tower``."""
    from tokred.testing.models import _llava_inputs

    vc = model.config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2  # _llava_inputs counts the patches (the class token is dropped)
    inputs = _llava_inputs(model, batch=batch, text_len=text_len, seed=seed)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == batch * n
    return inputs
