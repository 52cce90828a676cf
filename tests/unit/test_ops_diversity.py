"""Diversity selections (DivPrune's max-min, CDPruner's DPP) against compact re-implementations of the papers
(``tests/paper_references.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from paper_references import ref_cdpruner_kernel, ref_divprune, ref_dpp_greedy, ref_relevance

from tokred.ops.diversity import (
    cdpruner_kernel,
    cosine_similarity_matrix,
    dpp_greedy_keep,
    dpp_greedy_order,
    max_min_diversity_keep,
    max_min_diversity_order,
    relevance_scores,
)

# ------------------------------------------------------------------------------------------------ DivPrune


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize(("n", "c", "k"), [(7, 5, 3), (13, 16, 5), (31, 8, 9), (57, 12, 6), (64, 32, 17)])
def test_divprune_matches_the_reference(seed, n, c, k):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, n, c, generator=g, dtype=torch.float64)
    want = ref_divprune(x[0].numpy(), k)
    assert max_min_diversity_order(x, k)[0].tolist() == want
    assert max_min_diversity_keep(x, k)[0].tolist() == sorted(want)
    # float32 input gives the same selection on generic data
    assert max_min_diversity_keep(x.float(), k)[0].tolist() == sorted(want)


def test_divprune_batch_rows_are_independent_references():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 23, 6, generator=g, dtype=torch.float64)
    got = max_min_diversity_keep(x, 5)
    for b in range(3):
        assert got[b].tolist() == sorted(ref_divprune(x[b].numpy(), 5))


def test_divprune_protected_tokens_are_kept_and_not_candidates():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 11, 4, generator=g, dtype=torch.float64)
    protected = torch.zeros(1, 11, dtype=torch.bool)
    protected[0, [0, 5]] = True
    free = [i for i in range(11) if not protected[0, i]]
    want = sorted(free[i] for i in ref_divprune(x[0, free].numpy(), 4))
    assert max_min_diversity_keep(x, 4, protected=protected)[0].tolist() == sorted([0, 5] + want)


def test_divprune_never_keeps_a_duplicate_while_distinct_tokens_remain():
    base = torch.eye(4, dtype=torch.float64)
    x = torch.cat([base, base[:2]])[None]  # tokens 4, 5 repeat tokens 0, 1
    keep = max_min_diversity_keep(x, 4)[0].tolist()
    assert len({tuple(x[0, i].tolist()) for i in keep}) == 4
    assert max_min_diversity_keep(x, 6)[0].tolist() == list(range(6))  # unique indices even past the distinct ones


def test_divprune_edge_counts():
    x = torch.randn(2, 5, 3)
    assert max_min_diversity_keep(x, 0).shape == (2, 0)
    assert torch.equal(max_min_diversity_keep(x, 9), torch.arange(5).expand(2, 5))
    assert max_min_diversity_keep(x[:, :1], 1).tolist() == [[0], [0]]
    with pytest.raises(ValueError, match="k must be >= 0"):
        max_min_diversity_keep(x, -1)


# ------------------------------------------------------------------------------------------------ CDPruner / DPP


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("n", "k"), [(7, 3), (13, 6), (21, 10), (33, 5)])
def test_dpp_greedy_matches_the_log_det_reference(seed, n, k):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, n, 48, generator=g, dtype=torch.float64)  # C > N: a full-rank kernel
    text = torch.randn(1, 48, generator=g, dtype=torch.float64)
    for w in (0.0, 0.5, 1.0):
        kernel = cdpruner_kernel(x, relevance_scores(x, text), w)
        ref_kernel = ref_cdpruner_kernel(x[0].numpy(), text[0].numpy(), w)
        np.testing.assert_allclose(kernel[0].numpy(), ref_kernel, rtol=1e-12, atol=1e-12)
        want = ref_dpp_greedy(ref_kernel, k)
        assert dpp_greedy_order(kernel, k)[0].tolist() == want, f"w={w}"
        assert dpp_greedy_keep(kernel.float(), k)[0].tolist() == sorted(want), f"w={w} (float32)"


def test_relevance_matches_the_reference_and_is_normalised():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 9, 6, generator=g, dtype=torch.float64)
    text = torch.randn(2, 6, generator=g, dtype=torch.float64)
    r = relevance_scores(x, text)
    for b in range(2):
        np.testing.assert_allclose(r[b].numpy(), ref_relevance(x[b].numpy(), text[b].numpy()), atol=1e-12)
        assert float(r[b].min()) == 0.0 and float(r[b].max()) == 1.0
    # a zero query (no text) has no preference: uniform relevance
    assert torch.equal(
        relevance_scores(x, torch.zeros(2, 6, dtype=torch.float64)), torch.ones(2, 9, dtype=torch.float64)
    )


def test_dpp_fills_up_by_quality_once_the_kernel_rank_is_exhausted():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 10, 3, generator=g)  # rank 3: at most 3 picks add volume
    order = dpp_greedy_order(cosine_similarity_matrix(x), 7)[0].tolist()
    assert len(set(order)) == 7
    assert order[3:] == [i for i in range(10) if i not in order[:3]][:4]  # equal quality: lower index first


def test_dpp_protected_and_edge_counts():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 16, generator=g)
    kernel = cosine_similarity_matrix(x)
    protected = torch.zeros(2, 8, dtype=torch.bool)
    protected[:, 3] = True
    keep = dpp_greedy_keep(kernel, 2, protected=protected)
    assert keep.shape == (2, 3) and bool((keep == 3).any(dim=1).all())
    assert dpp_greedy_keep(kernel, 0).shape == (2, 0)
    assert torch.equal(dpp_greedy_keep(kernel, 20), torch.arange(8).expand(2, 8))
    with pytest.raises(ValueError, match="relevance_weight"):
        cdpruner_kernel(x, None, 1.5)
    with pytest.raises(ValueError, match=r"\(B, N, N\)"):
        dpp_greedy_keep(kernel[:, :, :4], 2)
