"""Properties of top-k / random selection with protected tokens."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tokred.ops import gather_tokens, group_sizes, random_keep, source_from_keep, topk_keep
from tokred.testing.strategies import budgets, protected_masks, seeds, token_batches

pytestmark = pytest.mark.properties


@st.composite
def scored_batches(draw, *, min_batch=1):
    scores = draw(token_batches(min_batch=min_batch, min_dim=1, max_dim=1))[..., 0]  # (B, N), ties allowed
    protected = draw(protected_masks(shape=tuple(scores.shape)))
    k = draw(budgets(max_value=scores.shape[1] + 3))
    return scores, protected, k


@given(case=scored_batches())
def test_keep_count_order_and_protected(case):
    scores, protected, k = case
    b, n = scores.shape
    p = int(protected[0].sum())
    idx = topk_keep(scores, k, protected=protected)
    assert idx.shape == (b, p + min(k, n - p))
    assert bool((idx[:, 1:] > idx[:, :-1]).all())  # unique and in original order
    kept = torch.zeros(b, n, dtype=torch.bool).scatter(1, idx, True)
    assert bool(kept[protected].all())


@given(case=scored_batches())
def test_keeps_the_highest_scores_lowest_index_on_ties(case):
    scores, protected, k = case
    idx = topk_keep(scores, k, protected=protected)
    for row in range(scores.shape[0]):
        kept = set(idx[row].tolist())
        candidates = [i for i in range(scores.shape[1]) if not protected[row, i]]
        chosen = [i for i in candidates if i in kept]
        dropped = [i for i in candidates if i not in kept]
        s = scores[row].tolist()
        assert all(s[u] > s[d] or (s[u] == s[d] and u < d) for u in chosen for d in dropped)


@given(x=token_batches(), extra=st.integers(0, 3))
def test_keeping_everything_is_bitwise_identity(x, extra):
    b, n, _ = x.shape
    idx = topk_keep(x[..., 0], n + extra)
    assert torch.equal(idx, torch.arange(n).expand(b, n))
    assert torch.equal(gather_tokens(x, idx), x)
    assert torch.equal(source_from_keep(idx, n), idx)


@given(case=scored_batches(min_batch=2))
def test_batch_independence(case):
    scores, protected, k = case
    idx = topk_keep(scores, k, protected=protected)
    for row in range(scores.shape[0]):
        row_idx = topk_keep(scores[row : row + 1], k, protected=protected[row : row + 1])
        assert torch.equal(row_idx, idx[row : row + 1])


@given(case=scored_batches(), seed=seeds(), other_global=seeds())
def test_random_keep_is_determined_by_the_seed(case, seed, other_global):
    scores, protected, k = case
    b, n = scores.shape
    first = random_keep(n, k, batch=b, seed=seed, protected=protected)
    torch.manual_seed(other_global)  # global RNG state must not matter ...
    state = torch.get_rng_state()
    second = random_keep(n, k, batch=b, seed=seed, protected=protected)
    assert torch.equal(torch.get_rng_state(), state)  # ... nor be advanced
    assert torch.equal(first, second)
    kept = torch.zeros(b, n, dtype=torch.bool).scatter(1, first, True)
    assert bool(kept[protected].all())


@given(case=scored_batches())
def test_selection_provenance_partitions_kept_inputs(case):
    scores, protected, k = case
    b, n = scores.shape
    idx = topk_keep(scores, k, protected=protected)
    source = source_from_keep(idx, n)
    assert torch.equal(source.gather(1, idx), torch.arange(idx.shape[1]).expand(b, -1))
    assert torch.equal(group_sizes(source, idx.shape[1]), torch.ones_like(idx))
    assert int((source == -1).sum()) == b * (n - idx.shape[1])


@given(data=st.data())
def test_gather_tokens_matches_indexing(data):
    x = data.draw(token_batches())
    b, n, _ = x.shape
    idx = data.draw(token_batches(shape=(b, 5), min_value=0, max_value=n - 1)).long()
    gathered = gather_tokens(x, idx)
    for row in range(b):
        assert torch.equal(gathered[row], x[row, idx[row]])
