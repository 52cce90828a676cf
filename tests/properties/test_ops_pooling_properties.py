"""Properties of 2-D average pooling of token grids."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from tokred.ops import avg_pool_grid, group_sizes, pooled_grid_shape, provenance_matrix
from tokred.testing.strategies import token_grids

pytestmark = pytest.mark.properties


@st.composite
def pool_cases(draw):
    x, grid = draw(token_grids())
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (kernel[0] + draw(st.integers(0, 1)), kernel[1] + draw(st.integers(0, 1)))
    ceil_mode = draw(st.booleans())
    assume(0 not in pooled_grid_shape(grid, kernel, stride, ceil_mode))
    return x, grid, kernel, stride, ceil_mode


@given(case=pool_cases())
def test_count_matches_torch_and_provenance_partitions(case):
    x, grid, kernel, stride, ceil_mode = case
    pooled, source = avg_pool_grid(x, grid, kernel=kernel, stride=stride, ceil_mode=ceil_mode)
    h, w = pooled_grid_shape(grid, kernel, stride, ceil_mode)
    reference = torch.nn.functional.avg_pool2d(torch.zeros(1, 1, *grid), kernel, stride, ceil_mode=ceil_mode)
    assert reference.shape[-2:] == (h, w)
    assert pooled.shape == (x.shape[0], h * w, x.shape[2])
    assert source.shape == x.shape[:2]
    assert int(source.min()) >= -1 and int(source.max()) < h * w
    assert bool((group_sizes(source, h * w) >= 1).all())  # every output has inputs
    if ceil_mode and stride == kernel:
        assert bool((source >= 0).all())  # windows tile the whole grid


@given(case=pool_cases())
def test_output_is_mean_of_its_window(case):
    x, grid, kernel, stride, ceil_mode = case
    x = x.double()
    pooled, source = avg_pool_grid(x, grid, kernel=kernel, stride=stride, ceil_mode=ceil_mode)
    m = provenance_matrix(source, pooled.shape[1]).double()  # (B, n_out, N)
    torch.testing.assert_close(pooled, (m @ x) / m.sum(-1, keepdim=True))


@given(case=pool_cases(), value=st.floats(-4, 4, width=32))
def test_constant_grid_is_fixed_point(case, value):
    x, grid, kernel, stride, ceil_mode = case
    pooled, _ = avg_pool_grid(torch.full_like(x, value), grid, kernel=kernel, stride=stride, ceil_mode=ceil_mode)
    torch.testing.assert_close(pooled, torch.full_like(pooled, value))


@given(grid_case=token_grids(), ceil_mode=st.booleans())
def test_kernel_one_is_bitwise_identity(grid_case, ceil_mode):
    x, grid = grid_case
    pooled, source = avg_pool_grid(x, grid, kernel=1, ceil_mode=ceil_mode)
    assert torch.equal(pooled, x)
    assert torch.equal(source, torch.arange(x.shape[1]).expand(x.shape[0], -1))


@given(case=pool_cases())
def test_batch_independence(case):
    x, grid, kernel, stride, ceil_mode = case
    pooled, source = avg_pool_grid(x, grid, kernel=kernel, stride=stride, ceil_mode=ceil_mode)
    for row in range(x.shape[0]):
        row_pooled, row_source = avg_pool_grid(
            x[row : row + 1], grid, kernel=kernel, stride=stride, ceil_mode=ceil_mode
        )
        torch.testing.assert_close(row_pooled, pooled[row : row + 1])
        assert torch.equal(row_source, source[row : row + 1])
