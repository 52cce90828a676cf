"""The [CLS]-attention ops against the plain re-implementations on random inputs, and the order that VisPruner's
rounds depend on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tower_references import ref_visionzip, ref_vispruner

from tokred.ops.tower import cls_attention_rows, visionzip_groups, vispruner_keep


def _attention(scores: np.ndarray) -> np.ndarray:
    """A (1, T, T) attention whose class-token row over the patches is ``scores`` (what the references read)."""
    t = len(scores) + 1
    att = np.zeros((1, t, t))
    att[0, 0, 1:] = scores
    return att


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("n", "keep", "important"), [(30, 6, 3), (47, 20, 5), (16, 15, 0), (64, 9, 9)])
def test_vispruner_keep_equals_the_reference(seed, n, keep, important):
    g = torch.Generator().manual_seed(seed)
    scores, feats = torch.rand(2, n, generator=g), torch.randn(2, n + 1, 5, generator=g)
    ours = vispruner_keep(scores, feats[:, 1:], keep, important)
    for b in range(2):
        ratio = important / keep
        want = ref_vispruner(_attention(scores[b].double().numpy()), feats[b].double().numpy(), keep, ratio)
        assert ours[b].tolist() == want


def test_vispruner_relisting_order_matters():
    """Relisting the kept even-slot tokens in raster order instead of by descending similarity changes the result:
    the order decides the next split, so it must be the reference's."""

    def raster_relist(scores, feats, keep, important):
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        rest, div = order[important:], keep - important
        unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        while len(rest) > div:
            r = min(8, len(rest) - div)
            even, odd = rest[0::2], rest[1::2]
            sim = {a: max(float(unit[a] @ unit[b]) for b in odd) for a in even}
            dropped = set(sorted(even, key=lambda a: -sim[a])[:r])
            rest = [a for a in even if a not in dropped] + odd  # raster (list) order, not similarity order
        return sorted(order[:important] + rest[:div])

    differs = 0
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        scores, feats = torch.rand(1, 40, generator=g), torch.randn(1, 40, 5, generator=g)
        ours = vispruner_keep(scores, feats, 8, 2)[0].tolist()
        differs += ours != raster_relist(scores[0].tolist(), feats[0].double().numpy(), 8, 2)
    assert differs > 0


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("dominant", "contextual"), [(10, 4), (3, 7), (1, 5), (20, 0)])
def test_visionzip_groups_equal_the_reference(seed, dominant, contextual):
    g = torch.Generator().manual_seed(seed)
    n = 33
    cls_sum, keys = torch.rand(2, n, generator=g), torch.randn(2, n + 1, 6, generator=g)
    dom, rest, group = visionzip_groups(cls_sum, keys[:, 1:], dominant - 1, contextual)
    for b in range(2):
        want_dom, targets, want_groups = ref_visionzip(
            _attention(cls_sum[b].double().numpy()), keys[b].double().numpy()[None], dominant, contextual
        )
        assert dom[b].tolist() == want_dom
        assert rest[b].tolist() == [j for j in range(n) if j not in want_dom]
        if contextual:
            assert group[b].tolist() == want_groups
            m = rest.shape[1]
            positions = list(range(0, m, max(1, m // min(contextual, m))))[: min(contextual, m)]
            assert rest[b, positions].tolist() == targets


def test_cls_attention_rows_is_the_class_row_of_full_attention():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 9, 4, generator=g), torch.randn(2, 3, 9, 4, generator=g)
    full = torch.softmax(q @ k.transpose(-1, -2) * 0.5, -1)  # (B, H, T, T)
    torch.testing.assert_close(cls_attention_rows(q[:, :, :1], k, 0.5), full[:, :, 0])


def test_tower_context_rows_per_head_mean_sum_and_batch_row():
    from tokred.testing.towers import synthetic_tower

    _, tower = synthetic_tower(batch=3, patches=10, layers=5, heads=4)
    layer = tower.feature_layer
    each = tower.cls_rows(layer, heads="each")  # (B, H, n)
    assert each.shape == (3, 4, 10)
    assert torch.equal(each, tower.cls_attention[:, tower.layers.index(layer), :, 1:])
    torch.testing.assert_close(tower.cls_rows(layer), each.mean(1))
    torch.testing.assert_close(tower.cls_rows(layer, heads="sum"), each.sum(1))
    one = tower.row(2)
    assert torch.equal(one.cls_rows(layer, heads="each")[0], each[2]) and one.features.shape[0] == 1
    with pytest.raises(KeyError, match="no class-token attention captured for tower layer 0"):
        tower.cls_rows(0)
