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


def test_aim_merge_on_vision_keys_matches_a_manual_merge():
    from tokred.strategies.aim import merge_rounds

    from tokred.ops import aim_merge_frames

    model, make_inputs = tiny_model("llava")
    inputs = make_inputs(batch=1, seed=2)
    captured = {}
    tower = model.model.vision_tower
    key = [m for name, m in tower.named_modules() if name.endswith("k_proj")][-1]
    hook = key.register_forward_hook(lambda _m, _i, out: captured.setdefault("keys", out.detach()))
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output
    hook.remove()
    feats = feats[0] if isinstance(feats, (list, tuple)) else feats
    feats = feats.reshape(1, -1, feats.shape[-1])
    n = feats.shape[1]
    keys = captured["keys"][:, -n:]  # drop the class token
    _, want_source = aim_merge_frames(feats, merge_rounds(n, 0.25), metric=keys)

    with tokred.patch(model, "aim-merge", keep_ratio=0.25, metric="keys") as handle, torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    ((_, positions),) = handle.stats.visual_provenance
    # same partition of the patches into merged groups (output labels differ only by position order)
    got_groups = {tuple(torch.nonzero(positions == p)[:, 0].tolist()) for p in positions.unique()}
    want_groups = {tuple(torch.nonzero(want_source[0] == o)[:, 0].tolist()) for o in want_source[0].unique()}
    assert got_groups == want_groups

    with tokred.patch(model, "aim-merge", keep_ratio=0.25) as handle, torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    ((_, by_features),) = handle.stats.visual_provenance
    feature_groups = {tuple(torch.nonzero(by_features == p)[:, 0].tolist()) for p in by_features.unique()}
    assert feature_groups != got_groups  # the metric really changed the matching


def test_keys_metric_without_aligned_tower_is_a_clear_error():
    from tokred.errors import ConfigError

    model, make_inputs = tiny_model("llava_next")
    inputs = make_inputs(batch=1, seed=0)
    with tokred.patch(model, "aim-merge", metric="keys"), torch.no_grad():
        with pytest.raises(ConfigError, match="metric='keys'"):
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
