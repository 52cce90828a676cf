"""VidCom2 (strategies/vidcom2.py, tokred.ops.vidcom) against a plain float64 loop re-implementation of the paper."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import tokred
from tokred.ops.vidcom import frame_uniqueness, vidcom2_frame_budgets, vidcom2_keep, vidcom2_keep_count


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b) / max(float(np.linalg.norm(a)) * float(np.linalg.norm(b)), 1e-8)


def ref_budgets(clip: np.ndarray, ratio: float, temperature: float = 0.01) -> list[int]:
    """The paper's Frame Compression Adjustment in loops: f_t = mean token, g = mean f_t, u_t = -cos(f_t, g),
    sigma = softmax(u / temperature), r_t = r * (1 + sigma_t - 1/T); the clip keeps K = max(1, floor(r * T * n))
    tokens: quotas K * (1 + sigma_t - 1/T) / T, any quota above n set to n and its excess shared by the other frames
    in proportion (repeated), then floors plus one token each for the largest remainders (earlier frame on ties)."""
    t, n, _ = clip.shape
    f = [clip[i].mean(0) for i in range(t)]
    g = sum(f) / t
    u = [-_cos(f[i], g) / temperature for i in range(t)]
    top = max(u)
    e = [math.exp(v - top) for v in u]
    sigma = [v / sum(e) for v in e]
    w = [(1 + s - 1 / t) / t for s in sigma]
    k = max(1, math.floor(Fraction(str(ratio)) * t * n))
    fixed: set[int] = set()
    quota = [k * wi for wi in w]
    while any(quota[i] > n for i in range(t) if i not in fixed):
        fixed |= {i for i in range(t) if quota[i] > n}
        rest = k - n * len(fixed)
        free = sum(w[i] for i in range(t) if i not in fixed)
        quota = [float(n) if i in fixed else rest * w[i] / free for i in range(t)]
    base = [min(n, math.floor(q)) for q in quota]
    by_remainder = sorted(range(t), key=lambda i: (-(quota[i] - base[i]), i))
    for i in by_remainder[: k - sum(base)]:
        base[i] += 1
    return base


def ref_vidcom2(clip: np.ndarray, ratio: float, temperature: float = 0.01) -> list[int]:
    """The paper's Adaptive Token Compression in loops: a token's similarity is cos(x, g) + cos(x, f_t); each frame
    keeps its budget of least similar tokens (earlier token on ties); the kept flat indices in original order."""
    t, n, _ = clip.shape
    f = [clip[i].mean(0) for i in range(t)]
    g = sum(f) / t
    kept = []
    for i, budget in enumerate(ref_budgets(clip, ratio, temperature)):
        sims = [(_cos(clip[i, j], g) + _cos(clip[i, j], f[i]), j) for j in range(n)]
        kept += [i * n + j for _, j in sorted(sims)[:budget]]
    return sorted(kept)


def _clip(seed: int, t: int, n: int, c: int = 8) -> np.ndarray:
    gen = np.random.default_rng(seed)
    clip = gen.standard_normal((t, n, c)) + 0.5  # a shared offset: frame means are not ~0
    clip[1:] = 0.6 * clip[:-1] + 0.4 * clip[1:]  # temporal correlation, as in video
    clip[gen.integers(t)] += gen.standard_normal(c)  # one frame that stands out
    return clip


CASES = [(4, 16, 0.25, 0.01), (8, 9, 0.5, 0.01), (3, 5, 0.3, 0.05), (6, 7, 0.9, 0.01), (5, 11, 0.15, 1.0)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("t", "n", "ratio", "temperature"), CASES)
def test_selection_equals_the_reference(seed, t, n, ratio, temperature):
    clip = _clip(seed, t, n)
    x = torch.from_numpy(clip).reshape(1, t * n, -1)
    assert vidcom2_frame_budgets(x, t, ratio, temperature)[0].tolist() == ref_budgets(clip, ratio, temperature)
    assert vidcom2_keep(x, t, ratio, temperature)[0].tolist() == ref_vidcom2(clip, ratio, temperature)


def test_a_batch_is_each_clip_on_its_own():
    clips = [_clip(s, 5, 9) for s in (10, 11, 12)]
    x = torch.from_numpy(np.stack(clips)).reshape(3, 45, -1)
    keep = vidcom2_keep(x, 5, 0.4)  # (3, 18): the same total, different per-frame budgets
    assert [row.tolist() for row in keep] == [ref_vidcom2(c, 0.4) for c in clips]


def test_ties_go_to_the_earlier_token_and_the_earlier_frame():
    frame = torch.randn(6, 4)
    clip = frame.repeat(3, 1)[None]  # (1, 18, 4): identical frames, equal uniqueness
    assert vidcom2_frame_budgets(clip, 3, 0.5)[0].tolist() == [3, 3, 3]
    assert vidcom2_frame_budgets(clip, 3, 0.25)[0].tolist() == [2, 1, 1]  # K = floor(4.5): the remainder to frame 0
    dup = torch.randn(1, 2 * 5, 3)
    dup[0, 6:] = dup[0, 5]  # frame 1: five equal tokens
    keep = vidcom2_keep(dup, 2, 0.4)[0].tolist()
    ref = ref_vidcom2(dup[0].reshape(2, 5, 3).double().numpy(), 0.4)
    assert keep == ref and [i for i in keep if i >= 5] == list(range(5, 5 + sum(i >= 5 for i in keep)))


def test_budgets_sum_exactly_and_never_exceed_a_frame():
    gen = torch.Generator().manual_seed(0)
    for t, n, ratio in [(7, 13, 0.95), (9, 3, 0.5), (2, 50, 1.0), (16, 4, 0.01)]:
        x = torch.randn(2, t * n, 6, generator=gen)
        x[:, :n] += 5.0  # a very unique first frame
        b = vidcom2_frame_budgets(x, t, ratio, temperature=1e-3)
        assert (b.sum(1) == vidcom2_keep_count(t * n, ratio)).all() and (b <= n).all() and (b >= 0).all()
    assert vidcom2_keep_count(8 * 196, 0.25) == 392 and vidcom2_keep_count(10, 0.3) == 3  # exact: not 2
    assert vidcom2_keep_count(10, 0.01) == 1, "never an empty clip"


def test_unique_frames_get_more_and_a_high_temperature_is_uniform():
    x = torch.randn(1, 4 * 10, 8) * 0.1 + 1.0
    x[0, 20:30] = torch.randn(10, 8) - 1.0  # frame 2 differs from the video
    b = vidcom2_frame_budgets(x, 4, 0.5)[0]
    assert int(b.argmax()) == 2 and int(b[2]) > 5
    assert vidcom2_frame_budgets(x, 4, 0.5, temperature=100.0)[0].tolist() == [5, 5, 5, 5]


def test_scores_are_float32_for_half_precision_and_a_lone_frame_keeps_its_share():
    x = torch.randn(2, 3 * 4, 6).bfloat16()
    assert frame_uniqueness(x, 3).dtype == torch.float32
    merger = tokred.create_component("merger", "vidcom2", retention_ratio=0.25)
    assert merger.output_count(4 * 16, (4, 4)) == 16 and merger.output_count(16, (4, 4)) == 4
    res = merger.merge(torch.randn(1, 16, 8), tokred.MergeContext(grid=(4, 4)))
    assert res.x.shape == (1, 4, 8) and int((res.source >= 0).sum()) == 4
    s = tokred.create_strategy("vidcom2", retention_ratio=0.5)
    assert s.merger is not None and s.merger.temporal and s.budget_knob == "retention_ratio"
    assert s.budget_direction == 1 and s.merger.config.temperature == 0.01
