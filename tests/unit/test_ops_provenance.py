"""Unit tests of provenance helpers."""

from __future__ import annotations

import pytest
import torch

from tokred.ops import compose_sources, group_sizes, identity_source, provenance_matrix, source_from_keep


def test_select_then_merge():
    first = source_from_keep(torch.tensor([[0, 2, 3]]), n_in=4)
    assert torch.equal(first, torch.tensor([[0, -1, 1, 2]]))
    composed = compose_sources(first, torch.tensor([[0, 0, 1]]))
    assert torch.equal(composed, torch.tensor([[0, -1, 0, 1]]))
    assert torch.equal(group_sizes(composed, 2), torch.tensor([[2, 1]]))


def test_provenance_matrix():
    m = provenance_matrix(torch.tensor([[1, -1, 0]]), 2)
    assert torch.equal(m, torch.tensor([[[False, False, True], [True, False, False]]]))


def test_identity_source_is_writable_per_row():
    source = identity_source(2, 3)
    source[0, 0] = 5  # a real tensor, not an expanded view
    assert source[1, 0].item() == 0


def test_compose_after_dropping_everything():
    first = torch.full((1, 3), -1)
    assert torch.equal(compose_sources(first, torch.zeros(1, 0, dtype=torch.long)), first)


def test_compose_batch_mismatch():
    with pytest.raises(ValueError, match="batch sizes differ"):
        compose_sources(torch.zeros(2, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
