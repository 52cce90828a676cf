"""VidCom2 on tiny models of every video family against the loop re-implementation of tests/unit/test_vidcom2.py:
what reaches the decoder is the reference's selection, text and structural rows untouched; the generic path (images
as frames) and the model-free token prediction agree; budget matching on FLOPs finds the retention ratio."""

from __future__ import annotations

import pytest
import torch
from test_video_strategies import FRAMES, _llm_inputs, _model, _video_features, _visual_rows

import tokred
from tokred.budget import predict_tokens_per_layer
from tokred.testing.models import IMAGE_ID, VIDEO_ID
from tokred.testing.video import VIDEO_FAMILIES

pytestmark = pytest.mark.integration


def _ref_vidcom2(clip, ratio, temperature=0.01):
    from unit.test_vidcom2 import ref_vidcom2

    return ref_vidcom2(clip, ratio, temperature)


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
@pytest.mark.parametrize(("ratio", "temperature"), [(0.25, 0.01), (0.5, 0.1)])
def test_vidcom2_keeps_what_the_reference_keeps(family, ratio, temperature):
    model, make = _model(family)
    inputs = make(batch=1, frames=FRAMES)
    clip = _video_features(model, inputs, family)  # (T, n, C)
    expected = _ref_vidcom2(clip.double().numpy(), ratio, temperature)
    opts = dict(retention_ratio=ratio, temperature=temperature)
    ids, embeds, stats = _llm_inputs(model, inputs, "vidcom2", opts)
    got = embeds[_visual_rows(ids, family)]
    flat = clip.reshape(-1, clip.shape[-1])
    assert got.shape[0] == len(expected) == int(FRAMES * clip.shape[1] * ratio)
    assert torch.equal(got, flat[expected]), "VidCom2 keeps the reference's tokens, in their original order"
    token = IMAGE_ID if family == "llava" else VIDEO_ID
    n_text = int((inputs["input_ids"][0] != token).sum())
    assert int((ids != token).sum()) == n_text, "text untouched"
    assert int((ids == token).sum()) - len(expected) == (family == "llava_onevision"), "OneVision's newline kept"


def test_vidcom2_on_frames_as_images_and_flops_prediction():
    """The generic path (a prompt of images taken as one clip) and the model-free count agree."""
    model, make = _model("llava")
    inputs = make(batch=1, frames=FRAMES)
    _, _, stats = _llm_inputs(model, inputs, "vidcom2", dict(retention_ratio=0.3))
    s = tokred.create_strategy("vidcom2", retention_ratio=0.3)
    text = int((inputs["input_ids"][0] != IMAGE_ID).sum())
    want = predict_tokens_per_layer(
        s, num_layers=4, text_tokens=text, visual_tokens=64, images=FRAMES, grid=(8, 8), video=True
    )
    assert stats.tokens_per_layer == want and stats.visual_tokens_out == 76  # floor(0.3 * 4 * 64)
