"""Video through the pipeline on every family that takes video in transformers (tiny models of
`tokred.testing.video`): bitwise identity with nothing reduced, cache == no-cache, padded batch == singles, text and
structural rows never dropped, frames reduced independently (oracle), M-RoPE temporal positions kept."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import tokred
import tokred.adapters.hf
from tokred.pipeline import select_adapter
from tokred.testing.models import VIDEO_ID
from tokred.testing.reference import reference_last_logits
from tokred.testing.video import VIDEO_FAMILIES, tiny_video_model, video_tokens_per_frame

pytestmark = pytest.mark.integration

FRAMES = 4
VIDEO_ONLY = [f for f in VIDEO_FAMILIES if f != "llava"]  # families with a video input (llava: frames as images)
STRATEGIES = {
    "pooling": dict(kernel=2),
    "random": dict(layer=0, keep_ratio=0.5, seed=3),
    "fastv": dict(layer=2, keep_ratio=0.5),
    "aim": dict(variant="video"),
    "evs": dict(rate=0.5),
    "vidcom2": dict(retention_ratio=0.5),
}


@functools.cache
def _model(family):
    return tiny_video_model(family)


def _generate(model, inputs, steps=3):
    with torch.no_grad():
        return model.generate(
            **inputs, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
        )


def _single(family, inputs, b):
    """Sample ``b`` of a batch on its own (left padding removed, its own frames)."""
    keep = inputs["attention_mask"][b].bool()
    tokens = ("input_ids", "attention_mask", "mm_token_type_ids")
    out = {k: inputs[k][b : b + 1][:, keep] for k in tokens if k in inputs}
    if "video_grid_thw" in inputs:
        per = int(inputs["video_grid_thw"][b].prod())
        out["pixel_values_videos"] = inputs["pixel_values_videos"][b * per : (b + 1) * per]
        out["video_grid_thw"] = inputs["video_grid_thw"][b : b + 1]
    elif "pixel_values_videos" in inputs:
        out["pixel_values_videos"] = inputs["pixel_values_videos"][b : b + 1]
    else:
        out["pixel_values"] = inputs["pixel_values"][b * FRAMES : (b + 1) * FRAMES]
    return out


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_nothing_reduced_is_bitwise_identical_and_remove_restores(family):
    model, make = _model(family)
    inputs = make(batch=2, frames=FRAMES)
    base = _generate(model, inputs)
    for strategy, opts in (("none", {}), ("random", dict(layer=0, keep_ratio=1.0))):
        with tokred.patch(model, strategy, **opts):
            out = _generate(model, inputs)
        assert torch.equal(out.sequences, base.sequences)
        assert all(torch.equal(a, b) for a, b in zip(out.logits, base.logits)), strategy
    assert all(torch.equal(a, b) for a, b in zip(_generate(model, inputs).logits, base.logits))


def _grow(inputs, gen, step):
    """``inputs`` followed by ``step`` generated tokens (attention mask, token types and explicit M-RoPE positions
    grown alike: a generated token's position is one past the prompt's last token's largest, on every axis, as the
    Qwen-VL models number decode steps)."""
    full = dict(inputs)
    full["input_ids"] = torch.cat([inputs["input_ids"], gen[:, :step]], 1)
    full["attention_mask"] = torch.ones_like(full["input_ids"])  # batch 1: no padding
    if "mm_token_type_ids" in full:
        full["mm_token_type_ids"] = F.pad(inputs["mm_token_type_ids"], (0, step))
    pos = inputs.get("position_ids")
    if pos is not None and step:
        pos = pos[-3:]  # (3, B, N): 5.24's generate adds a text-position row on top
        nxt = pos[:, :, -1:].amax(0, keepdim=True) + 1 + torch.arange(step)  # (1, B, step): after the last token
        full["position_ids"] = torch.cat([pos, nxt.expand(3, -1, -1)], 2)
    return full


def _reduced_prefill_inputs(model, inputs, strategy, opts):
    """Generate under a patch and capture what the base model received at the prefill (tokred's reduced inputs)."""
    adapter = select_adapter(model)
    seen = []
    with tokred.patch(model, strategy, **opts) as handle:
        h = adapter.base.register_forward_pre_hook(lambda _m, a, k: seen.append(dict(k)), with_kwargs=True)
        out = _generate(model, inputs)
        h.remove()
        keeps = dict(handle.stats.kept_indices)
    pre = seen[0]
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "position_ids", "mm_encoder_outputs", "pixel_values")
    keys += ("pixel_values_videos", "video_grid_thw")
    reduced = {k: pre[k] for k in keys if pre.get(k) is not None}
    if reduced.get("position_ids") is not None and reduced["position_ids"].dim() == 2:
        del reduced["position_ids"]  # 1-D positions: contiguous, the model numbers them itself
    return out, reduced, keeps


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_cache_equals_no_cache_recomputation(family, strategy):
    """Every generated step's logits equal an explicit no-cache run of the *unpatched* model on the reduced prompt
    (tokred's pre-LLM output) plus the generated tokens, each layer on the tokens it kept
    (`tokred.testing.reference`)."""
    model, make = _model(family)
    inputs = make(batch=1, frames=FRAMES)
    n = inputs["input_ids"].shape[1]
    out, reduced, keeps = _reduced_prefill_inputs(model, inputs, strategy, STRATEGIES[strategy])
    short = reduced["input_ids"].shape[1]
    assert short < n or strategy == "fastv"
    assert bool(keeps) == (strategy in ("fastv", "aim"))
    gen = out.sequences[:, n:]
    for step, logits in enumerate(out.logits):
        ref = reference_last_logits(model, _grow(reduced, gen, step), keeps, short)
        assert (logits - ref).abs().max().item() <= 1e-5, f"step {step}"


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
@pytest.mark.parametrize("strategy", ["pooling", "random", "fastv", "evs", "vidcom2"])
def test_padded_batch_equals_single_runs(family, strategy):
    model, make = _model(family)
    inputs = make(batch=2, frames=FRAMES, seed=1)
    assert len(set(inputs["attention_mask"].sum(1).tolist())) == 2, "the samples must differ in length"
    with tokred.patch(model, strategy, **STRATEGIES[strategy]):
        batch = _generate(model, inputs)
        for b in range(2):
            one = _single(family, inputs, b)
            single = _generate(model, one)
            for step, logits in enumerate(single.logits):
                torch.testing.assert_close(batch.logits[step][b : b + 1], logits, atol=1e-5, rtol=1e-5)


def _decoder_inputs(model, inputs, strategy, opts):
    """(input_ids reaching the base model's decoder, its position ids) under a patch, by a decoder pre-hook."""
    seen = {}
    adapter = select_adapter(model)

    def hook(_m, args, kwargs):
        seen["pos"] = kwargs.get("position_ids")
        seen["n"] = kwargs["inputs_embeds"].shape[1]

    def base_hook(_m, args, kwargs):
        seen["ids"] = kwargs["input_ids"]

    h = adapter.decoder.register_forward_pre_hook(hook, with_kwargs=True)
    with tokred.patch(model, strategy, **opts) as handle:
        hb = adapter.base.register_forward_pre_hook(base_hook, with_kwargs=True)  # after tokred's own pre-hook
        with torch.no_grad():
            model(**inputs)
        hb.remove()
        stats = handle.stats
    h.remove()
    return seen, stats


def _pooled_keep(inputs, family):
    """Original positions the 2 x 2 pooling of every frame keeps: all text (and OneVision's newline) plus the
    top-left token of each window, computed from the placeholder layout alone."""
    ids = inputs["input_ids"][0]
    per, side = video_tokens_per_frame(family), 4
    vid = (ids == VIDEO_ID).nonzero()[:, 0]
    keep = set(range(ids.shape[0])) - set(vid.tolist())
    frames = [vid[f * per : (f + 1) * per] for f in range(FRAMES)]
    for pos in frames:
        keep |= {int(pos[r * side + c]) for r in range(0, side, 2) for c in range(0, side, 2)}
    if family == "llava_onevision":
        keep.add(int(vid[-1]))  # the newline row after the frames
    return sorted(keep)


@pytest.mark.parametrize("family", VIDEO_ONLY)
def test_pooling_reduces_each_frame_on_its_own_like_an_independent_oracle(family):
    """The pooled features equal 2 x 2 average pooling of each frame's grid (F.avg_pool2d), the newline row is kept,
    the text is untouched, and the logits equal a run of the unpatched model on hand-built shortened inputs."""
    model, make = _model(family)
    inputs = make(batch=1, frames=FRAMES)
    adapter = select_adapter(model)
    with torch.no_grad():
        out = adapter.base.get_video_features(
            **{k: v for k, v in inputs.items() if k in ("pixel_values_videos", "video_grid_thw")}, return_dict=True
        )
    pooled = out.pooler_output
    feats = (pooled[0] if torch.is_tensor(pooled) else pooled[0]).reshape(-1, pooled[0].shape[-1])
    per = video_tokens_per_frame(family)
    grid = feats[: FRAMES * per].reshape(FRAMES, 4, 4, -1).permute(0, 3, 1, 2)  # (T, C, 4, 4)
    expect = F.avg_pool2d(grid, 2).permute(0, 2, 3, 1).reshape(FRAMES * 4, -1)  # (T * 4, C)
    if family == "llava_onevision":
        expect = torch.cat([expect, feats[-1:]], 0)
    keep = _pooled_keep(inputs, family)
    seen, stats = _decoder_inputs(model, inputs, "pooling", dict(kernel=2))
    assert torch.equal(seen["ids"][0], inputs["input_ids"][0, keep]), "text, order and placeholders"
    assert seen["n"] == len(keep) and stats.tokens_per_layer[0] == len(keep)
    ref = {k: v[:, keep] for k, v in inputs.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    video = type(out)(pooler_output=[expect] if not torch.is_tensor(pooled) else expect[None])
    if getattr(out, "deepstack_features", None):
        video.deepstack_features = [
            (
                torch.cat(
                    [
                        F.avg_pool2d(lv[0].reshape(FRAMES, 4, 4, -1).permute(0, 3, 1, 2), 2)
                        .permute(0, 2, 3, 1)
                        .reshape(FRAMES * 4, -1)
                    ]
                ),
            )
            for lv in out.deepstack_features
        ]
    ref["mm_encoder_outputs"] = {"video": video}
    if seen["pos"] is not None and seen["pos"].dim() == 3 and seen["pos"].shape[0] >= 3:
        full = {k: inputs[k] for k in ("input_ids", "mm_token_type_ids", "video_grid_thw", "attention_mask")}
        own = tokred.adapters.hf.rope_index(adapter.base, full)  # (3, 1, N): the model's own M-RoPE positions
        ref["position_ids"] = own[:, :, keep]
        assert torch.equal(seen["pos"][-3:], ref["position_ids"]), "survivors keep their own (t, h, w) positions"
        video_rows = [i for i, p in enumerate(keep) if int(inputs["input_ids"][0, p]) == VIDEO_ID]
        t_axis = ref["position_ids"][0, 0, video_rows]
        assert len(set(t_axis.tolist())) == FRAMES, "one temporal position per frame"
    with torch.no_grad():
        base = model(**ref).logits[:, -1]
    with tokred.patch(model, "pooling", kernel=2), torch.no_grad():
        got = model(**inputs).logits[:, -1]
    torch.testing.assert_close(got, base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl", "qwen3_vl"])
def test_in_llm_pruning_never_drops_text_or_the_newline(family):
    model, make = _model(family)
    inputs = make(batch=1, frames=FRAMES)
    ids = inputs["input_ids"][0]
    vid = (ids == VIDEO_ID).nonzero()[:, 0]
    protected = set(range(ids.shape[0])) - set(vid.tolist())
    if family == "llava_onevision":
        protected.add(int(vid[-1]))
    with tokred.patch(model, "fastv", layer=2, keep_ratio=0.25) as handle, torch.no_grad():
        model(**inputs)
        kept = handle.stats.kept_indices
    assert kept, "fastv prunes at layer k"
    for layer, index in kept.items():
        assert protected <= set(index[0].tolist()), layer
        assert len(set(index[0].tolist()) & set(vid.tolist())) < vid.numel()


def test_qwen_mixed_image_and_video_prompt():
    """One prompt with an image block and a video block: both reduced, positions from the model's own numbering."""
    model, make = _model("qwen2_vl")
    from tokred.testing.models import tiny_model

    _, make_img = tiny_model("qwen2_vl")
    img, vid = make_img(batch=1), make(batch=1, frames=2)
    inputs = {
        "input_ids": torch.cat([img["input_ids"], vid["input_ids"]], 1),
        "attention_mask": torch.cat([img["attention_mask"], vid["attention_mask"]], 1),
        "mm_token_type_ids": torch.cat([img["mm_token_type_ids"], vid["mm_token_type_ids"]], 1),
        "pixel_values": img["pixel_values"],
        "image_grid_thw": img["image_grid_thw"],
        "pixel_values_videos": vid["pixel_values_videos"],
        "video_grid_thw": vid["video_grid_thw"],
    }
    base = _generate(model, inputs)
    with tokred.patch(model, "none"):
        assert torch.equal(_generate(model, inputs).sequences, base.sequences)
    with tokred.patch(model, "pooling", kernel=2) as handle:
        out = _generate(model, inputs)
        assert handle.stats.visual_tokens_in == 16 + 2 * 16 and handle.stats.visual_tokens_out == 4 + 2 * 4
    assert out.sequences.shape == base.sequences.shape
