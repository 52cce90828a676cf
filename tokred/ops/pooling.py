"""Plain 2-D average pooling of a row-major token grid, with provenance (the ``pooling`` baseline).

Example:
    >>> import torch
    >>> from tokred.ops import avg_pool_grid, pooled_grid_shape
    >>> x = torch.arange(16.0).view(1, 16, 1)  # (B, H*W, C) for a 4x4 grid
    >>> pooled, source = avg_pool_grid(x, (4, 4), kernel=2)
    >>> pooled.squeeze(-1)
    tensor([[ 2.5000,  4.5000, 10.5000, 12.5000]])
    >>> source
    tensor([[0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]])
    >>> pooled_grid_shape((27, 27), kernel=2, ceil_mode=True)
    (14, 14)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["avg_pool_grid", "pooled_grid_shape"]


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
    if min(pair) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return pair


def _windows(
    kernel: int | tuple[int, int], stride: int | tuple[int, int] | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    k = _pair(kernel, "kernel")
    s = k if stride is None else _pair(stride, "stride")
    if s[0] < k[0] or s[1] < k[1]:
        # provenance maps each input to one output, which overlapping windows would violate
        raise ValueError(
            f"stride {s} is smaller than kernel {k}: overlapping windows are not supported; use stride >= kernel"
        )
    return k, s


def _pooled_len(size: int, k: int, s: int, ceil_mode: bool) -> int:
    """Output length along one axis, following torch's pooling rule with no padding."""
    out = -(-(size - k) // s) + 1 if ceil_mode else (size - k) // s + 1
    # like torch: in ceil mode the last window must start inside the input
    if ceil_mode and (out - 1) * s >= size:
        out -= 1
    return max(out, 0)


def pooled_grid_shape(
    grid: tuple[int, int],
    kernel: int | tuple[int, int] = 2,
    stride: int | tuple[int, int] | None = None,
    ceil_mode: bool = False,
) -> tuple[int, int]:
    """Grid shape after `avg_pool_grid`.

    Args:
        grid: Input grid (H, W).
        kernel: Window size, an int or (kh, kw).
        stride: Window step (defaults to ``kernel``); must be >= ``kernel``.
        ceil_mode: Keep partial windows at the bottom/right edges.

    Returns:
        The pooled grid (H', W'); a side is 0 when the grid is smaller than the kernel without ``ceil_mode``.
    """
    (kh, kw), (sh, sw) = _windows(kernel, stride)
    return _pooled_len(grid[0], kh, sh, ceil_mode), _pooled_len(grid[1], kw, sw, ceil_mode)


def _axis_source(size: int, k: int, s: int, out: int, device: torch.device) -> Tensor:
    """Window index of every position along one axis, -1 where no window covers it."""
    pos = torch.arange(size, device=device)  # (size,)
    window = torch.div(pos, s, rounding_mode="floor")  # (size,)
    covered = (pos - window * s < k) & (window < out)  # (size,)
    return torch.where(covered, window, torch.full_like(window, -1))  # (size,)


def _grid_source(
    grid: tuple[int, int], k: tuple[int, int], s: tuple[int, int], out: tuple[int, int], device: torch.device
) -> Tensor:
    """Provenance of pooling one row-major grid: shape (H*W,), values in [-1, H'*W')."""
    rows = _axis_source(grid[0], k[0], s[0], out[0], device)  # (H,)
    cols = _axis_source(grid[1], k[1], s[1], out[1], device)  # (W,)
    src = rows[:, None] * out[1] + cols[None, :]  # (H, W)
    covered = (rows[:, None] >= 0) & (cols[None, :] >= 0)  # (H, W)
    return torch.where(covered, src, torch.full_like(src, -1)).flatten()  # (H*W,)


def avg_pool_grid(
    x: Tensor,
    grid: tuple[int, int],
    *,
    kernel: int | tuple[int, int] = 2,
    stride: int | tuple[int, int] | None = None,
    ceil_mode: bool = False,
) -> tuple[Tensor, Tensor]:
    """Average-pool a row-major grid of tokens with non-overlapping windows.

    Each output is the plain mean of the inputs in its window (partial edge windows with ``ceil_mode`` average only
    the inputs they cover). With ``stride > kernel`` or without ``ceil_mode`` some inputs fall in no window; their
    provenance is -1.

    Args:
        x: Tokens, shape (B, H*W, C), row-major over the grid.
        grid: Grid shape (H, W).
        kernel: Window size, an int or (kh, kw); 1 returns ``x`` itself.
        stride: Window step (defaults to ``kernel``); must be >= ``kernel``.
        ceil_mode: Keep partial windows at the bottom/right edges.

    Returns:
        Pooled tokens, shape (B, H'*W', C) (see `pooled_grid_shape`), and provenance, shape (B, H*W).

    Raises:
        ValueError: If ``x`` does not match ``grid``, windows overlap, or the grid is smaller than the kernel.
    """
    height, width = grid
    if x.dim() != 3 or x.shape[1] != height * width:
        raise ValueError(f"x must have shape (B, H*W={height * width}, C) for grid {grid}, got {tuple(x.shape)}")
    k, s = _windows(kernel, stride)
    out = pooled_grid_shape(grid, k, s, ceil_mode)
    if 0 in out:
        raise ValueError(f"grid {grid} is smaller than kernel {k}; use a smaller kernel or ceil_mode=True")
    batch, n, channels = x.shape
    source = _grid_source(grid, k, s, out, x.device).expand(batch, n).clone()  # (B, H*W)
    if k == (1, 1) and s == (1, 1):
        return x, source
    img = x.transpose(1, 2).reshape(batch, channels, height, width)  # (B, C, H, W)
    pooled = F.avg_pool2d(img, k, s, ceil_mode=ceil_mode)  # (B, C, H', W')
    return pooled.flatten(2).transpose(1, 2), source  # (B, H'*W', C)
