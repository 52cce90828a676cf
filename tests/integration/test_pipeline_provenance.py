"""``stats.visual_provenance``: where every original visual token ended up in the decoder's sequence."""

from __future__ import annotations

import pytest
import torch

import tokred
from tokred.testing.models import tiny_model

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("name", "options", "groups"), [("pooling", {}, 4), ("aim-merge", {"keep_ratio": 0.25}, None)])
def test_provenance_maps_patches_to_decoder_positions(name, options, groups):
    model, make_inputs = tiny_model("llava")
    inputs = make_inputs(batch=2, seed=3)
    with tokred.patch(model, name, **options) as handle, torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    stats = handle.stats
    assert len(stats.visual_provenance) == 2  # one image per sample
    image_id = model.config.image_token_id
    n_patches = int((inputs["input_ids"][0] == image_id).sum())
    expected_out = tokred.create_strategy(name, **options).merger.output_count(n_patches)
    for sample, positions in stats.visual_provenance:
        assert positions.shape == (n_patches,)
        assert bool((positions >= 0).all())  # merging keeps every patch somewhere
        distinct = positions.unique()
        assert distinct.numel() == expected_out
        if groups is not None:
            assert torch.equal(torch.bincount(positions)[distinct], torch.full_like(distinct, groups))
        assert sample in (0, 1)
    # both samples' images land in the visual span of the (left-padded) decoder sequence, at distinct rows
    first = {int(p) for s, pos in stats.visual_provenance if s == 0 for p in pos}
    assert first and max(first) < stats.tokens_per_layer[0]


def test_random_selection_provenance_marks_dropped_patches():
    model, make_inputs = tiny_model("llava")
    inputs = make_inputs(batch=1, seed=1)
    with tokred.patch(model, "random", keep_ratio=0.5) as handle, torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    ((_, positions),) = handle.stats.visual_provenance
    kept = positions[positions >= 0]
    assert kept.numel() == positions.numel() // 2 and kept.unique().numel() == kept.numel()
