"""EVS (strategies/evs.py, tokred.ops.temporal) against a plain float64 re-implementation of the paper's selection."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import tokred
from tokred.ops.temporal import evs_keep, evs_keep_count, frame_dissimilarity


def ref_evs(clip: np.ndarray, rate: float) -> list[int]:
    """EVS from the paper's description, in loops: score = 1 - cos to the same position of the previous frame
    (frame 0: always kept), keep max(n, floor(T * n * (1 - rate))) highest scores, earlier token on ties; returns the
    kept flat indices in original order."""
    t, n, _ = clip.shape
    scores = []
    for f in range(t):
        for j in range(n):
            if f == 0:
                scores.append((math.inf, f * n + j))
                continue
            a, b = clip[f, j], clip[f - 1, j]
            cos = float(a @ b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-8)
            scores.append((1.0 - cos, f * n + j))
    k = max(n, math.floor(t * n * (1 - Fraction(str(rate)))))
    best = sorted(scores, key=lambda s: (-s[0], s[1]))[:k]
    return sorted(i for _, i in best)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("t", "n", "rate"), [(4, 16, 0.75), (8, 9, 0.5), (3, 5, 0.3), (6, 4, 0.9), (2, 7, 0.0)])
def test_selection_equals_the_reference(seed, t, n, rate):
    gen = np.random.default_rng(seed)
    clip = gen.standard_normal((t, n, 8))
    clip[1:] = 0.6 * clip[:-1] + 0.4 * clip[1:]  # some temporal correlation, as in video
    ours = evs_keep(torch.from_numpy(clip).reshape(1, t * n, 8), t, rate)[0].tolist()
    assert ours == ref_evs(clip, rate)


def test_keep_count_formula_and_frame_zero():
    assert evs_keep_count(8, 196, 0.75) == 392  # floor(8 * 196 * 0.25)
    assert evs_keep_count(2, 196, 0.75) == 196  # never fewer than one frame
    assert evs_keep_count(3, 10, 0.3) == 21  # exact decimal: 30 * 0.7 is 21, not 20.999...
    x = torch.randn(1, 4 * 6, 5)
    keep = evs_keep(x, 4, 0.75)[0]
    assert keep[:6].tolist() == list(range(6)), "frame 0 always survives"


def test_static_clip_keeps_the_first_frame_and_moving_tokens_win():
    frame = torch.randn(9, 4)
    clip = frame.repeat(4, 1)[None]  # (1, 36, 4): nothing changes
    assert evs_keep(clip, 4, 0.75)[0].tolist() == list(range(9))
    moved = clip.clone()
    moved[0, 2 * 9 + 5] = -moved[0, 2 * 9 + 5]  # one token of frame 2 changes
    keep = evs_keep(moved, 4, 0.5)[0].tolist()  # 18 kept: frame 0, the changed token, the one after it, then ties
    assert keep[:9] == list(range(9)) and 2 * 9 + 5 in keep and 3 * 9 + 5 in keep


def test_dissimilarity_is_float32_and_infinite_on_frame_zero():
    x = torch.randn(2, 3 * 4, 6).bfloat16()
    d = frame_dissimilarity(x, 3)
    assert d.dtype == torch.float32 and d.shape == (2, 12)
    assert torch.isinf(d[:, :4]).all() and torch.isfinite(d[:, 4:]).all()


def test_merger_output_count_reads_frames_from_the_grid_and_a_lone_image_is_kept():
    merger = tokred.create_component("merger", "evs", rate=0.75)
    assert merger.output_count(4 * 16, (4, 4)) == 16 and merger.output_count(8 * 16, (4, 4)) == 32
    x = torch.randn(1, 16, 8)
    res = merger.merge(x, tokred.MergeContext(grid=(4, 4)))
    assert torch.equal(res.x, x)  # one frame: nothing to compare with
    s = tokred.create_strategy("evs", rate=0.5)
    assert s.merger is not None and s.merger.temporal and s.budget_knob == "rate" and s.budget_direction == -1
