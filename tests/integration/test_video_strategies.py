"""Video strategies on tiny models of every video family, each against an independent re-implementation of its
selection: EVS (tests/unit/test_evs.py's loop reference), AIM's per-frame merge (the parity reference of
tests/parity), random and pooling per frame; AIM's ``variant="auto"`` picks the video defaults for video input."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from tokred.strategies.aim import merge_rounds

import tokred
from tokred.budget import predict_tokens_per_layer
from tokred.pipeline import select_adapter
from tokred.testing.models import VIDEO_ID
from tokred.testing.video import VIDEO_FAMILIES, tiny_video_model, video_tokens_per_frame

pytestmark = pytest.mark.integration

FRAMES = 4


@functools.cache
def _model(family):
    return tiny_video_model(family)


def _ref_evs(clip, rate):
    from unit.test_evs import ref_evs

    return ref_evs(clip, rate)


def _ref_aim(frames, keep):
    from parity.test_aim_ops_parity import reference_aim_merge

    return reference_aim_merge(frames.double(), merge_rounds(frames.shape[1], keep)).float()


def _video_features(model, inputs, family):
    """Per frame, the (n, C) projected features the unpatched model gives the LLM, shape (T, n, C)."""
    adapter = select_adapter(model)
    per = video_tokens_per_frame(family)
    if family == "llava":
        enc = adapter.encoder_kwargs(inputs)
        with torch.no_grad():
            out = adapter.base.get_image_features(**enc, return_dict=True).pooler_output
        feats = torch.cat(list(out), 0) if not torch.is_tensor(out) else out.reshape(-1, out.shape[-1])
    else:
        enc = {k: v for k, v in inputs.items() if k in ("pixel_values_videos", "video_grid_thw")}
        with torch.no_grad():
            out = adapter.base.get_video_features(**enc, return_dict=True).pooler_output
        feats = out[0].reshape(-1, out[0].shape[-1])
    return feats[: FRAMES * per].reshape(FRAMES, per, -1)


def _llm_inputs(model, inputs, strategy, opts):
    """(input_ids, the LLM's input embeddings) under a patch: what reached the decoder."""
    adapter = select_adapter(model)
    seen = {}

    def base_hook(_m, args, kwargs):
        seen["ids"] = kwargs["input_ids"]

    def dec_hook(_m, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    hd = adapter.decoder.register_forward_pre_hook(dec_hook, with_kwargs=True)
    with tokred.patch(model, strategy, **opts) as handle:
        hb = adapter.base.register_forward_pre_hook(base_hook, with_kwargs=True)
        with torch.no_grad():
            model(**inputs)
        hb.remove()
        stats = handle.stats
    hd.remove()
    return seen["ids"][0], seen["embeds"][0], stats


def _visual_rows(ids, family):
    token = tokred.testing.models.IMAGE_ID if family == "llava" else VIDEO_ID
    rows = (ids == token).nonzero()[:, 0]
    return rows[:-1] if family == "llava_onevision" else rows  # OneVision's trailing newline row


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
@pytest.mark.parametrize("rate", [0.75, 0.5])
def test_evs_keeps_what_the_reference_keeps(family, rate):
    model, make = _model(family)
    inputs = make(batch=1, frames=FRAMES)
    clip = _video_features(model, inputs, family)  # (T, n, C)
    expected = _ref_evs(clip.double().numpy(), rate)
    ids, embeds, stats = _llm_inputs(model, inputs, "evs", dict(rate=rate))
    got = embeds[_visual_rows(ids, family)]
    flat = clip.reshape(-1, clip.shape[-1])
    assert got.shape[0] == len(expected) == max(clip.shape[1], int(FRAMES * clip.shape[1] * (1 - rate)))
    assert torch.equal(got, flat[expected]), "EVS keeps the reference's tokens, in their original order"
    assert set(range(clip.shape[1])) <= set(expected), "frame 0 survives whole"
    n_text = int((inputs["input_ids"][0] != VIDEO_ID).sum()) if family != "llava" else None
    if n_text is not None:  # text (and OneVision's newline) untouched
        assert int((ids != VIDEO_ID).sum()) == n_text and int((ids == VIDEO_ID).sum()) - len(expected) in (0, 1)


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_aim_video_merges_each_frame_like_the_reference(family):
    model, make = _model(family)
    inputs = make(batch=1, frames=FRAMES)
    clip = _video_features(model, inputs, family)
    expected = _ref_aim(clip, 0.25)  # (T, m, C): each frame on its own, AIM's rounds (16 -> 8 -> 4)
    ids, embeds, stats = _llm_inputs(model, inputs, "aim-merge", dict(variant="video"))
    got = embeds[_visual_rows(ids, family)]
    torch.testing.assert_close(got, expected.reshape(-1, expected.shape[-1]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl", "qwen3_vl"])
def test_aim_auto_uses_the_video_defaults_for_video(family):
    model, make = _model(family)
    inputs = make(batch=1, frames=FRAMES)
    per = video_tokens_per_frame(family)
    ids, embeds, stats = _llm_inputs(model, inputs, "aim", {})
    auto = tokred.create_strategy("aim")
    video = tokred.create_strategy("aim", variant="video")
    merged = FRAMES * (per - sum(merge_rounds(per, 0.25)))  # 25 % per frame (16 -> 8 -> 4), not 0.4375
    text = int((ids != VIDEO_ID).sum()) + (family == "llava_onevision")  # OneVision's newline is never reduced
    assert merged == FRAMES * 4 and stats.tokens_per_layer[0] == text + merged
    layers = model.config.get_text_config().num_hidden_layers
    kw = dict(num_layers=layers, text_tokens=text, visual_tokens=per, images=FRAMES)
    want = predict_tokens_per_layer(video, **kw)
    assert stats.tokens_per_layer == want, "the video variant's keep ratio and (l1, l2), scaled to the depth"
    assert predict_tokens_per_layer(auto, video=True, **kw) == want  # the model-free prediction agrees
    assert predict_tokens_per_layer(auto, **kw)[0] == text + FRAMES * 7, "images: 0.4375 (16 -> 8 -> 7)"
    assert auto.scheduler.resolved(28) == (11, 18) and auto.scheduler.for_video().resolved(28) == (14, 22)
    explicit = tokred.create_strategy("aim", keep_ratio=0.5)
    assert explicit.merger.for_video().config.keep_ratio == 0.5, "an explicit keep_ratio applies to frames too"


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_random_and_pooling_reduce_every_frame_alike(family):
    model, make = _model(family)
    inputs = make(batch=1, frames=FRAMES)
    clip = _video_features(model, inputs, family)
    per = clip.shape[1]
    ids, embeds, _ = _llm_inputs(model, inputs, "random", dict(keep_ratio=0.5, seed=5))
    got = embeds[_visual_rows(ids, family)].reshape(FRAMES, per // 2, -1)
    kept = []
    for f in range(FRAMES):  # each frame keeps half of its own tokens, in order, at one seeded set of positions
        rows = [int((clip[f] == g).all(-1).nonzero()[0]) for g in got[f]]
        assert rows == sorted(rows) and len(set(rows)) == per // 2
        kept.append(rows)
    assert all(rows == kept[0] for rows in kept)
    ids, embeds, _ = _llm_inputs(model, inputs, "pooling", dict(kernel=2))
    side = int(np.sqrt(per))
    grid = clip.reshape(FRAMES, side, side, -1).permute(0, 3, 1, 2)
    pooled = torch.nn.functional.avg_pool2d(grid, 2).permute(0, 2, 3, 1).reshape(-1, clip.shape[-1])
    torch.testing.assert_close(embeds[_visual_rows(ids, family)], pooled, rtol=0, atol=1e-6)


def test_evs_on_frames_as_images_and_flops_prediction():
    """The generic path (a prompt of images taken as one clip) and the model-free count agree."""
    model, make = _model("llava")
    inputs = make(batch=1, frames=FRAMES)
    _, _, stats = _llm_inputs(model, inputs, "evs", dict(rate=0.75))
    evs = tokred.create_strategy("evs", rate=0.75)
    text = int((inputs["input_ids"][0] != tokred.testing.models.IMAGE_ID).sum())
    want = predict_tokens_per_layer(
        evs, num_layers=4, text_tokens=text, visual_tokens=64, images=FRAMES, grid=(8, 8), video=True
    )
    assert stats.tokens_per_layer == want and stats.visual_tokens_out == 64


def test_aim_auto_on_frames_as_images_follows_the_clip_hint():
    """The generic path: with ``images_as_clip`` AIM's auto variant merges each frame to 25 % (video), like the
    reference per-frame merge; without the hint the images get the image defaults (0.4375)."""
    model, make = _model("llava")
    inputs = make(batch=1, frames=FRAMES)
    text = int((inputs["input_ids"][0] != tokred.testing.models.IMAGE_ID).sum())
    aim = tokred.create_strategy("aim")
    kw = dict(num_layers=4, text_tokens=text, visual_tokens=64, images=FRAMES, grid=(8, 8))
    _, _, plain = _llm_inputs(model, inputs, "aim", {})
    ids, embeds, clip = _llm_inputs(model, inputs, "aim", dict(images_as_clip=True))
    assert plain.tokens_per_layer[0] == text + FRAMES * 28, "images: 64 -> 32 -> 28 (0.4375)"
    assert clip.tokens_per_layer[0] == text + FRAMES * 16, "frames: 64 -> 32 -> 16 (25 %)"
    assert plain.tokens_per_layer == predict_tokens_per_layer(aim, **kw)
    assert clip.tokens_per_layer == predict_tokens_per_layer(aim, video=True, **kw)
    expected = _ref_aim(_video_features(model, inputs, "llava"), 0.25)  # (T, 16, C)
    got = embeds[_visual_rows(ids, "llava")]
    torch.testing.assert_close(got, expected.reshape(-1, expected.shape[-1]), rtol=0, atol=1e-5)


def test_images_as_clip_is_set_per_call_and_reaches_the_schedule():
    """The handle's flag can change between calls; it selects the scheduler's video variant too."""
    model, make = _model("llava")
    inputs = make(batch=1, frames=FRAMES)
    one_shot = type(tokred.create_component("scheduler", "one-shot", layer=2, keep_ratio=0.5))

    class ClipSchedule(one_shot):  # type: ignore[misc, valid-type]
        def for_video(self):
            return one_shot(layer=1, keep_ratio=0.25)

    strategy = tokred.compose(
        scorer=tokred.create_component("scorer", "aim"), scheduler=ClipSchedule(layer=2, keep_ratio=0.5)
    )
    n = FRAMES * 64
    runs = []
    with tokred.patch(model, strategy) as handle:
        assert handle.images_as_clip is False
        for flag in (False, True, False):
            handle.images_as_clip = flag
            with torch.no_grad():
                model(**inputs)
            runs.append(handle.stats.visual_tokens_per_layer)
    assert runs[0] == runs[2] == [n, n, n // 2, n // 2]
    assert runs[1] == [n, n // 4, n // 4, n // 4]


def test_compare_tells_the_patch_that_video_samples_are_clips():
    """`tokred compare` feeds a clip's frames as images and sets ``images_as_clip`` for video samples: AIM's auto
    variant then keeps 25 % per frame; image samples keep the image defaults."""
    from PIL import Image

    from tokred.compare import CompareSettings, Variant, evaluate_variant, is_clip
    from tokred.eval.datasets import Sample

    model, make = _model("llava")

    class FramesRunner:  # every prompt is FRAMES images of the tiny generic model: a clip's frames, or FRAMES images
        image_token_id = tokred.testing.models.IMAGE_ID
        image_grid = frame_grid = (8, 8)

        def __init__(self):
            self.model = model

        def encode(self, samples):
            return make(batch=len(samples), frames=FRAMES)

        def decode(self, generated):
            return ["0"] * generated.shape[0]

    img = Image.new("RGB", (8, 8))
    clip = Sample(img, "q", ["0"], "default", "clip", frames=[img] * FRAMES)
    still = Sample(img, "q", ["0"], "default", "still")
    assert is_clip([clip]) and not is_clip([still]) and not is_clip([])
    settings = CompareSettings(model="tiny", batch_size=1, max_new_tokens=1)
    records = []
    for sample in (clip, still):
        evaluate_variant(
            FramesRunner(), Variant("aim", tokred.create_strategy("aim")), [sample], settings, records.extend
        )
    assert [r["visual_into_llm"] for r in records] == [FRAMES * 16, FRAMES * 28]
