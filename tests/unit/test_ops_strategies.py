"""The public hypothesis strategies produce what they promise (used by the ops property tests)."""

from __future__ import annotations

import torch
from hypothesis import given

from tokred.testing.strategies import (
    budgets,
    protected_masks,
    token_batches,
    token_grids,
    token_sizes,
    visual_spans,
)


@given(x=token_batches(min_batch=2, max_batch=2, min_tokens=3, max_tokens=5, min_dim=4, max_dim=4))
def test_token_batches_bounds(x):
    assert x.dtype == torch.float32 and x.shape[0] == 2 and 3 <= x.shape[1] <= 5 and x.shape[2] == 4
    assert bool(torch.isfinite(x).all())


@given(x=token_batches(shape=(2, 6, 3), unique=True))
def test_unique_elements(x):
    assert x.flatten().unique().numel() == x.numel()


@given(size=token_sizes(shape=(2, 5), max_size=3))
def test_token_sizes(size):
    assert size.shape == (2, 5) and bool(((size >= 1) & (size <= 3) & (size == size.round())).all())


@given(mask=visual_spans(min_visual=1))
def test_visual_spans_are_contiguous_with_equal_counts(mask):
    counts = mask.sum(1)
    assert bool((counts == counts[0]).all()) and int(counts[0]) >= 1
    for row in mask:
        where = row.nonzero().flatten()
        assert int(where[-1] - where[0]) + 1 == where.numel()


@given(mask=protected_masks(shape=(3, 7), max_protected=2))
def test_protected_masks(mask):
    counts = mask.sum(1)
    assert mask.dtype == torch.bool and bool((counts == counts[0]).all()) and int(counts[0]) <= 2


@given(case=token_grids(max_side=4))
def test_token_grids(case):
    x, (h, w) = case
    assert x.shape[1] == h * w


@given(k=budgets(n=5), ratio=budgets(ratio=True))
def test_budgets(k, ratio):
    assert 0 <= k <= 5 and 0.0 <= ratio <= 1.0
