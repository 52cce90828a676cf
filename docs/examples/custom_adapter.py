"""Add a model adapter: PaliGemma, tested on a tiny random PaliGemma built offline.

tokred now ships this adapter built in (``paligemma``); this file writes it as a
plugin would and forces it with the ``tokred_model_adapter`` hook, which is also how
a plugin overrides a built-in choice.
"""

import sys
from collections.abc import Callable
from typing import Any

import tokred
import torch
from tokred.adapters import ModelAdapter
from tokred.testing.models import tiny_text_kwargs
from transformers import (
    GemmaConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    SiglipVisionConfig,
)

IMAGE_ID, BOS_ID, PAD_ID = 250, 1, 0


class PaliGemmaAdapter(ModelAdapter):
    """PaliGemma (Gemma decoder): a prefix LM, image and prompt attend both ways.

    Everything else follows the generic contract. The model builds its bidirectional
    prefix as a materialised 4-D mask from ``token_type_ids``; tokred gathers it with
    the kept tokens (as for Gemma3), so kept tokens still see each other both ways,
    and a reduction before the LLM shortens ``token_type_ids`` with ``input_ids``.
    """

    name = "my-paligemma"
    families = "PaliGemma (Gemma decoder)"
    model_types = ("paligemma",)
    # The one difference: it lifts the generic adapter's refusal.
    handles_bidirectional = True

    @classmethod
    def matches(cls, model: Any) -> bool:
        # Not PaliGemma 2: its Gemma2 decoder (sliding windows, soft-capping) was not
        # tested with this adapter, so the generic adapter keeps refusing it.
        text_type = model.config.get_text_config().model_type
        return (
            model.config.model_type == "paligemma"
            and text_type == "gemma"
            and super().matches(model)
        )


@tokred.hookimpl
def tokred_register_adapters(register: Callable[[type[Any]], None]) -> None:
    """Register the adapter (the hook a plugin package's module implements)."""
    register(PaliGemmaAdapter)


@tokred.hookimpl
def tokred_model_adapter(model: Any, adapters: Any) -> type[Any] | None:
    """Choose this adapter for PaliGemma (tokred's own `paligemma` would win)."""
    return PaliGemmaAdapter if PaliGemmaAdapter.matches(model) else None


def tiny_paligemma() -> tuple[Any, dict[str, torch.Tensor]]:
    """A random PaliGemma (SigLIP, 4-layer Gemma, 16 image tokens) and two prompts."""
    vision = SiglipVisionConfig(  # a 32x32 image in 8x8 patches: 16 image tokens
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    config = PaliGemmaConfig(
        vision_config=vision,
        text_config=GemmaConfig(**tiny_text_kwargs(head_dim=16)),  # tokred's tiny size
        image_token_index=IMAGE_ID,
        projection_dim=64,
        vocab_size=256,
    )
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(config).eval()
    # A prompt is 16 image tokens, BOS and text; the first is 2 tokens shorter (padded
    # on the left). token_type_ids 0 marks the prefix, which attends both ways.
    image, bos = torch.full((2, 16), IMAGE_ID), torch.full((2, 1), BOS_ID)
    ids = torch.cat([image, bos, torch.randint(3, 200, (2, 8))], dim=1)
    ids[0] = torch.cat([torch.full((2,), PAD_ID), ids[0, :-2]])
    return model, {
        "input_ids": ids,
        "attention_mask": (ids != PAD_ID).long(),
        "token_type_ids": torch.zeros_like(ids),
        "pixel_values": torch.randn(2, 3, 32, 32),
    }


model, inputs = tiny_paligemma()
GREEDY = {"max_new_tokens": 4, "do_sample": False}

# 1. The generic adapter alone refuses PaliGemma and says why (tokred.patch raises this,
# model untouched, where no family adapter handles it).
reasons = ModelAdapter(model).refusals(pre_llm=True, in_llm=True)
print(reasons)  # ['image tokens attend bidirectionally within their span ...']
assert any("image tokens attend bidirectionally" in r for r in reasons)

# 2. Register this module as a plugin, in-process (a package uses an entry point).
tokred.register_plugin(sys.modules[__name__], name="paligemma")

with torch.no_grad():
    logits, tokens = model(**inputs).logits, model.generate(**inputs, **GREEDY)
    # 3. Keeping every token changes no bit, in prefill and in generation.
    with tokred.patch(model, "none") as handle:
        assert handle.adapter.name == "my-paligemma"
        assert torch.equal(model(**inputs).logits, logits)
        assert torch.equal(model.generate(**inputs, **GREEDY), tokens)
    # 4. FastV keeps 8 of the 16 image tokens from layer 2 on, in generate() too.
    with tokred.patch(model, "fastv", keep_ratio=0.5) as handle:
        model.generate(**inputs, **GREEDY)
        print(handle.stats.tokens_per_layer)  # [25, 25, 17, 17]
        assert handle.stats.tokens_per_layer == [25, 25, 17, 17]
    # 5. Pooling merges 2x2 image tokens (16 -> 4) before the LLM.
    with tokred.patch(model, "pooling") as handle:
        model(**inputs)
        assert handle.stats.tokens_per_layer == [25 - 12] * 4
    # Removing a patch restores the model bitwise.
    assert torch.equal(model(**inputs).logits, logits)

# 6. What cannot work is refused: ToMe changes the image token count inside the vision
# tower, and PaliGemma's projector expects a fixed grid.
try:
    tokred.patch(model, "tome")
    raise AssertionError("tome should be refused")
except tokred.UnsupportedModelError as err:
    assert "vision-tower merging" in str(err)
