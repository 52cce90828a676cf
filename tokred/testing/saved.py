"""A tiny LLaVA saved with a working processor (byte-level tokenizer, chat template, PIL image processor), built
offline in about a second, for tests that load a model from a folder the way a user's checkpoint is loaded.

Example:
    >>> from tokred.testing.saved import save_tiny_llava
    >>> folder = save_tiny_llava(tmp_path / "tiny")  # doctest: +SKIP
    >>> AutoModelForImageTextToText.from_pretrained(folder)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["IMAGE_SIZE", "save_tiny_llava", "tiny_processor"]

IMAGE_SIZE = 56  # 4 x 4 patches of 14 px: 16 visual tokens per image
SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<image>"]


def tiny_processor() -> Any:
    """A ``LlavaProcessor`` over a byte-level tokenizer of 256 byte tokens plus :data:`SPECIALS` (any text encodes),
    ChatML template with image slots, and a 56 px image processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlavaProcessor, PreTrainedTokenizerFast

    from tokred.adapters import hf
    from tokred.eval.reference import CHAT_TEMPLATE

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *alphabet])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        additional_special_tokens=["<image>"],
        padding_side="left",
    )
    image_processor = hf.pil_bit_image_processor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def save_tiny_llava(folder: str | Path, seed: int = 0) -> Path:
    """Build a random tiny LLaVA (CLIP tower 56 px / 14 px patches, 4-layer Llama decoder) matching
    :func:`tiny_processor` and save both into ``folder``.

    Returns:
        ``folder``, loadable with ``AutoModelForImageTextToText`` / ``AutoProcessor``.
    """
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from tokred.testing.models import tiny_text_kwargs

    processor = tiny_processor()
    tok = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=14,
    )
    text = LlamaConfig(
        **tiny_text_kwargs(
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    out = Path(folder)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
