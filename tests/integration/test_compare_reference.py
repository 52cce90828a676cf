"""``tokred compare``'s pictures on the built-in reference model: the kept-patch map is the real one (16 x 16 patches of
the 224 px crop the processor makes), non-empty for a pre-LLM and an in-LLM strategy."""

from __future__ import annotations

import numpy as np
import pytest

import tokred
from tokred.compare import Variant, kept_patch_picture, model_view, survival_maps

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def reference():
    from tokred.compare import load_runner
    from tokred.eval.datasets import load_dataset

    runner = load_runner(None)
    samples = list(load_dataset("shapes", split="test", limit=2))
    return runner, samples


def _points() -> list[Variant]:
    specs = [
        ("none", {}),
        ("pooling", {"kernel": 2}),
        ("divprune", {"keep_ratio": 0.25}),
        ("fastv", {"keep_ratio": 0.25}),
    ]
    return [Variant(name, tokred.create_strategy(name, **opts)) for name, opts in specs]


def test_survival_maps_are_non_empty_on_the_real_grid(reference):
    runner, samples = reference
    assert runner.image_grid == (16, 16)
    inputs = runner.encode(samples)
    depths, groups = survival_maps(runner, _points(), inputs)
    for name, maps in depths.items():
        for depth in maps:
            assert depth is not None and len(depth) == 256, name  # a map for every patch, never "no per-patch map"
    assert all(d == 1.0 for m in depths["none"] for d in m)  # nothing reduced: every patch everywhere
    for depth in depths["divprune"]:  # pre-LLM pruning: a quarter of the patches kept in every layer, the rest gone
        assert sorted(set(depth)) == [0.0, 1.0] and sum(d == 1.0 for d in depth) == 64
    for depth in depths["fastv"]:  # in-LLM: dropped patches were seen by the layers before the pruning layer only
        assert 0 < min(depth) < 1 and max(depth) == 1.0 and sum(d == 1.0 for d in depth) == 64
    for owner in groups["pooling"]:  # 2 x 2 pooling: 64 tokens of 4 patches each
        assert owner is not None and len(set(owner)) == 64 and all(owner.count(t) == 4 for t in set(owner))


def test_kept_picture_shows_the_image_the_model_saw(reference, tmp_path):
    runner, samples = reference
    inputs = runner.encode(samples)
    images = model_view(runner, inputs, samples)
    assert [im.size for im in images] == [(224, 224)] * 2  # the processor's centre crop, not the 256 px original
    colours = {tuple(px) for px in np.asarray(images[0]).reshape(-1, 3).tolist()}
    assert len(colours) > 3  # a picture, not a flat colour
    path = kept_patch_picture(runner, _points(), samples, tmp_path / "kept.png")
    assert path is not None and path.stat().st_size > 20_000
