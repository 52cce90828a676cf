"""Unit tests of selection ops."""

from __future__ import annotations

import pytest
import torch

from tokred.ops import gather_tokens, protected_count, random_keep, random_scores, topk_keep


def test_ragged_batch_error_names_the_counts():
    protected = torch.tensor([[True, False, False], [True, True, False]])
    with pytest.raises(ValueError, match=r"ragged batch.*\[1, 2\].*reduce each row separately"):
        topk_keep(torch.rand(2, 3), 1, protected=protected)


def test_negative_k_is_rejected():
    with pytest.raises(ValueError, match="k must be >= 0"):
        topk_keep(torch.rand(1, 3), -1)


def test_protected_mask_shape_is_checked():
    with pytest.raises(ValueError, match="bool tensor of shape"):
        protected_count(torch.zeros(1, 3), 1, 3)


def test_ties_keep_the_lowest_indices():
    assert torch.equal(topk_keep(torch.zeros(2, 6), 3), torch.tensor([[0, 1, 2], [0, 1, 2]]))


def test_protected_are_kept_in_place():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.0]])
    protected = torch.tensor([[False, False, False, False, True]])
    assert torch.equal(topk_keep(scores, 2, protected=protected), torch.tensor([[1, 3, 4]]))
    assert torch.equal(topk_keep(scores, 0, protected=protected), torch.tensor([[4]]))
    assert torch.equal(topk_keep(scores, 9, protected=protected), torch.arange(5)[None])


def test_k_zero_without_protection_keeps_nothing():
    assert topk_keep(torch.rand(2, 4), 0).shape == (2, 0)


def test_different_seeds_give_different_selections():
    picks = {tuple(random_keep(64, 8, batch=1, seed=seed).flatten().tolist()) for seed in range(20)}
    assert len(picks) == 20


def test_rows_of_a_random_batch_differ():
    keep = random_keep(64, 8, batch=2, seed=0)
    assert not torch.equal(keep[0], keep[1])


def test_random_scores_seed_and_generator_agree():
    a = random_scores((2, 5), seed=7)
    b = random_scores((2, 5), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not both"):
        random_scores((2, 5), seed=1, generator=torch.Generator())


def test_gather_tokens_is_differentiable():
    x = torch.randn(2, 5, 3, requires_grad=True)
    gather_tokens(x, torch.tensor([[0, 4], [1, 2]])).sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad[0, :, 0], torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0]))


def test_gather_tokens_shape_errors():
    with pytest.raises(ValueError, match="idx of shape"):
        gather_tokens(torch.randn(2, 5, 3), torch.zeros(3, 2, dtype=torch.long))
