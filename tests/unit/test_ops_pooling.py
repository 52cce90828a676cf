"""Unit tests of grid average pooling."""

from __future__ import annotations

import pytest
import torch

from tokred.ops import avg_pool_grid, pooled_grid_shape


def test_known_4x4_grid():
    x = torch.arange(16.0).view(1, 16, 1)
    pooled, source = avg_pool_grid(x, (4, 4), kernel=2)
    assert torch.equal(pooled.flatten(), torch.tensor([2.5, 4.5, 10.5, 12.5]))
    assert torch.equal(source, torch.tensor([[0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]]))


def test_odd_grid_floor_drops_the_edge_and_ceil_keeps_it():
    x = torch.arange(15.0).view(1, 15, 1)  # 3x5 grid
    pooled, source = avg_pool_grid(x, (3, 5), kernel=2)
    assert pooled.shape == (1, 2, 1)
    assert int((source == -1).sum()) == 15 - 8
    pooled, source = avg_pool_grid(x, (3, 5), kernel=2, ceil_mode=True)
    assert pooled.shape == (1, 6, 1)
    assert bool((source >= 0).all())
    assert pooled[0, -1, 0].item() == 14.0  # the corner window holds one token


@pytest.mark.parametrize(
    ("grid", "kernel", "stride", "ceil", "expected"),
    [((27, 27), 2, None, True, (14, 14)), ((27, 27), 2, None, False, (13, 13)), ((24, 24), 3, 4, False, (6, 6))],
)
def test_pooled_grid_shape(grid, kernel, stride, ceil, expected):
    assert pooled_grid_shape(grid, kernel, stride, ceil) == expected


def test_rectangular_kernel():
    x = torch.randn(2, 12, 3)  # 3x4 grid
    pooled, source = avg_pool_grid(x, (3, 4), kernel=(1, 2))
    assert pooled.shape == (2, 6, 3)
    torch.testing.assert_close(pooled[:, 0], (x[:, 0] + x[:, 1]) / 2)


def test_errors():
    x = torch.randn(1, 16, 2)
    with pytest.raises(ValueError, match="overlapping"):
        avg_pool_grid(x, (4, 4), kernel=2, stride=1)
    with pytest.raises(ValueError, match="H\\*W=9"):
        avg_pool_grid(x, (3, 3))
    with pytest.raises(ValueError, match="smaller than kernel"):
        avg_pool_grid(torch.randn(1, 4, 2), (1, 4), kernel=2)
    with pytest.raises(ValueError, match="kernel must be >= 1"):
        avg_pool_grid(x, (4, 4), kernel=0)
