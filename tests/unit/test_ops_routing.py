"""`tokred.ops.routing`: routable tokens and the rows a routed layer processes."""

from __future__ import annotations

import pytest
import torch

from tokred.errors import UnsupportedModeError
from tokred.ops.routing import routable_mask, route_keep


def test_routable_is_real_tokens_up_to_the_last_visual_one():
    visual = torch.tensor([[0, 0, 1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    real = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1], [1] * 8], dtype=torch.bool)
    assert routable_mask(visual, real).long().tolist() == [[0, 1, 1, 1, 1, 1, 0, 0], [0] * 8]


def test_route_keep_takes_top_routable_every_question_token_and_ties_earliest():
    routable = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    real = torch.ones(1, 6, dtype=torch.bool)
    scores = torch.tensor([[0.5, 0.5, 0.9, 0.1, -5.0, -5.0]])
    assert route_keep(scores, routable, real, torch.tensor([2])).tolist() == [[0, 2, 4, 5]]
    assert route_keep(scores, routable, real, torch.tensor([0])).tolist() == [[4, 5]]


def test_route_keep_evens_rows_with_their_earliest_padding():
    real = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    routable = torch.tensor([[0, 0, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    scores = torch.arange(6.0).expand(2, 6)
    keep = route_keep(scores, routable, real, torch.tensor([1, 2]))
    assert keep.tolist() == [[0, 3, 4, 5], [2, 3, 4, 5]]


def test_route_keep_refuses_rows_padding_cannot_even_out():
    real = torch.ones(2, 4, dtype=torch.bool)
    routable = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    with pytest.raises(UnsupportedModeError, match="separate batches"):
        route_keep(torch.zeros(2, 4), routable, real, torch.tensor([1, 1]))
