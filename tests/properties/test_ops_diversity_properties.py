"""Properties of the diversity selections: DivPrune's max-min diversity and CDPruner's greedy DPP."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from tokred.ops.diversity import (
    cdpruner_kernel,
    cosine_similarity_matrix,
    dpp_greedy_keep,
    dpp_greedy_order,
    max_min_diversity_keep,
    max_min_diversity_order,
    relevance_scores,
)
from tokred.testing.strategies import budgets, protected_masks, token_batches

pytestmark = pytest.mark.properties


@st.composite
def cases(draw, *, min_batch=1):
    x = draw(token_batches(min_batch=min_batch, max_tokens=24))  # (B, N, C): ties and repeats allowed
    protected = draw(protected_masks(shape=(x.shape[0], x.shape[1])))
    k = draw(budgets(max_value=x.shape[1] + 2))
    return x, protected, k


def _dpp_keep(x, k, protected=None):
    text = x.mean(dim=1)  # (B, C): any per-row query
    kernel = cdpruner_kernel(x, relevance_scores(x, text, protected=protected), 0.5)
    return dpp_greedy_keep(kernel, k, protected=protected)


SELECTIONS = {"divprune": max_min_diversity_keep, "dpp": _dpp_keep}


@pytest.mark.parametrize("name", sorted(SELECTIONS))
@given(case=cases())
def test_count_order_and_protected(name, case):
    x, protected, k = case
    b, n, _ = x.shape
    p = int(protected[0].sum())
    keep = SELECTIONS[name](x, k, protected=protected)
    assert keep.shape == (b, p + min(k, n - p))
    assert bool((keep[:, 1:] > keep[:, :-1]).all())  # unique survivors, in original order
    kept = torch.zeros(b, n, dtype=torch.bool).scatter(1, keep, True)
    assert bool(kept[protected].all())  # protected tokens untouched


@pytest.mark.parametrize("name", sorted(SELECTIONS))
@given(case=cases())
def test_deterministic(name, case):
    x, protected, k = case
    assert torch.equal(SELECTIONS[name](x, k, protected=protected), SELECTIONS[name](x.clone(), k, protected=protected))


@pytest.mark.parametrize("name", sorted(SELECTIONS))
@given(case=cases(min_batch=2))
def test_batch_independence(name, case):
    x, protected, k = case
    keep = SELECTIONS[name](x, k, protected=protected)
    for row in range(x.shape[0]):
        alone = SELECTIONS[name](x[row : row + 1], k, protected=protected[row : row + 1])
        assert torch.equal(alone, keep[row : row + 1])


@pytest.mark.parametrize("name", sorted(SELECTIONS))
@given(x=token_batches(max_tokens=16), extra=st.integers(0, 3))
def test_keeping_everything_keeps_every_index(name, x, extra):
    b, n, _ = x.shape
    assert torch.equal(SELECTIONS[name](x, n + extra), torch.arange(n).expand(b, n))


@given(case=cases(), scale=st.sampled_from([0.25, 2.0, 8.0]))
def test_divprune_is_scale_invariant(case, scale):
    x, protected, k = case
    norms = x.norm(dim=-1)
    assume(bool(((norms > 1e-3) | (norms == 0)).all()))  # far from normalize's eps and from underflow
    # powers of two scale exactly, so cosine distances (and the selection) are bitwise unchanged
    want = max_min_diversity_keep(x, k, protected=protected)
    assert torch.equal(max_min_diversity_keep(x * scale, k, protected=protected), want)


@given(case=cases())
def test_divprune_each_pick_maximises_the_min_distance_to_earlier_picks(case):
    x, protected, k = case
    order = max_min_diversity_order(x, k, protected=protected)
    dist = 1.0 - cosine_similarity_matrix(x)  # (B, N, N)
    for b in range(x.shape[0]):
        picked = order[b].tolist()
        free = [i for i in range(x.shape[1]) if not protected[b, i]]
        for t in range(1, len(picked)):
            rest = [i for i in free if i not in picked[:t]]
            gap = {i: float(dist[b, i, picked[:t]].min()) for i in rest}
            # up to float rounding: cosine distances of equal tokens are 0 +- 1 ulp, and the op may read the
            # (not bit-symmetric) matrix the other way round
            assert gap[picked[t]] >= max(gap.values()) - 1e-6


@given(case=cases())
def test_dpp_never_picks_a_protected_token_and_picks_each_once(case):
    x, protected, k = case
    order = dpp_greedy_order(cosine_similarity_matrix(x), k, protected=protected)
    for b in range(x.shape[0]):
        picks = order[b].tolist()
        assert len(set(picks)) == len(picks)
        assert not any(bool(protected[b, i]) for i in picks)
