"""Hypothesis strategies for property tests of token-reduction ops; public so plugin authors can reuse them.

All strategies take keyword-only arguments, default to small shapes (fast examples), and produce float32 or bool
torch tensors built from ``hypothesis.extra.numpy`` arrays.

Example:
    >>> from hypothesis import given
    >>> from tokred.ops import bipartite_soft_matching
    >>> from tokred.testing.strategies import budgets, token_batches
    >>> @given(x=token_batches(max_tokens=16), r=budgets(max_value=16))
    ... def test_count(x, r):
    ...     plan = bipartite_soft_matching(x, r)
    ...     assert plan.merge_mean(x).shape[1] == x.shape[1] - min(r, x.shape[1] // 2)
    >>> test_count()
"""

from __future__ import annotations

from typing import Literal, overload

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import Tensor

__all__ = [
    "budgets",
    "protected_masks",
    "seeds",
    "token_batches",
    "token_grids",
    "token_sizes",
    "visual_spans",
]


def _elements(min_value: float, max_value: float) -> st.SearchStrategy[float]:
    # subnormals are excluded: torch may flush them to zero, which breaks exact comparisons with numpy inputs
    return st.floats(
        min_value=min_value, max_value=max_value, width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False
    )


def _shape(draw: st.DrawFn, bounds: list[tuple[int, int]]) -> tuple[int, ...]:
    return tuple(draw(st.integers(lo, hi)) for lo, hi in bounds)


@st.composite
def token_batches(
    draw: st.DrawFn,
    *,
    min_batch: int = 1,
    max_batch: int = 3,
    min_tokens: int = 1,
    max_tokens: int = 32,
    min_dim: int = 1,
    max_dim: int = 8,
    min_value: float = -4.0,
    max_value: float = 4.0,
    unique: bool = False,
    shape: tuple[int, ...] | None = None,
) -> Tensor:
    """Batches of token features.

    Args:
        min_batch: Smallest batch size B.
        max_batch: Largest batch size B.
        min_tokens: Fewest tokens N.
        max_tokens: Most tokens N.
        min_dim: Smallest feature width C.
        max_dim: Largest feature width C.
        min_value: Smallest element value.
        max_value: Largest element value.
        unique: Make all elements distinct (fewer exact ties in scores).
        shape: Exact shape to draw instead of (B, N, C) from the bounds, e.g. to match another tensor.

    Returns:
        A strategy for float32 tensors of shape (B, N, C) (or ``shape``).
    """
    if shape is None:
        shape = _shape(draw, [(min_batch, max_batch), (min_tokens, max_tokens), (min_dim, max_dim)])
    arr = draw(hnp.arrays(np.float32, shape, elements=_elements(min_value, max_value), unique=unique))
    return torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))


@st.composite
def token_sizes(
    draw: st.DrawFn,
    *,
    shape: tuple[int, int] | None = None,
    min_batch: int = 1,
    max_batch: int = 3,
    min_tokens: int = 1,
    max_tokens: int = 32,
    max_size: int = 8,
) -> Tensor:
    """Token sizes (how many original tokens a token stands for), as ToMe tracks them.

    Args:
        shape: Exact (B, N); drawn from the bounds when None.
        min_batch: Smallest batch size B.
        max_batch: Largest batch size B.
        min_tokens: Fewest tokens N.
        max_tokens: Most tokens N.
        max_size: Largest size.

    Returns:
        A strategy for float32 tensors of shape (B, N) holding integers in ``[1, max_size]``.
    """
    if shape is None:
        shape = (draw(st.integers(min_batch, max_batch)), draw(st.integers(min_tokens, max_tokens)))
    arr = draw(hnp.arrays(np.int64, shape, elements=st.integers(1, max_size)))
    return torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))


def _row_mask(draw: st.DrawFn, n: int, count: int, contiguous: bool) -> Tensor:
    row = torch.zeros(n, dtype=torch.bool)
    if contiguous:
        start = draw(st.integers(0, n - count))
        row[start : start + count] = True
    else:
        positions = draw(st.lists(st.integers(0, n - 1), min_size=count, max_size=count, unique=True))
        row[positions] = True
    return row


def _masks(draw: st.DrawFn, shape: tuple[int, int], lo: int, hi: int | None, same: bool, contiguous: bool) -> Tensor:
    batch, n = shape
    hi = n if hi is None else min(hi, n)
    lo = min(lo, hi)
    counts = [draw(st.integers(lo, hi))] * batch if same else [draw(st.integers(lo, hi)) for _ in range(batch)]
    if batch == 0:
        return torch.zeros(shape, dtype=torch.bool)
    return torch.stack([_row_mask(draw, n, c, contiguous) for c in counts])  # (B, N)


@st.composite
def visual_spans(
    draw: st.DrawFn,
    *,
    shape: tuple[int, int] | None = None,
    min_batch: int = 1,
    max_batch: int = 3,
    min_tokens: int = 1,
    max_tokens: int = 32,
    min_visual: int = 0,
    max_visual: int | None = None,
    same_count: bool = True,
    contiguous: bool = True,
) -> Tensor:
    """Where visual tokens sit among text tokens: True = visual.

    Args:
        shape: Exact (B, N); drawn from the bounds when None.
        min_batch: Smallest batch size B.
        max_batch: Largest batch size B.
        min_tokens: Fewest tokens N.
        max_tokens: Most tokens N.
        min_visual: Fewest visual tokens per row (capped at N).
        max_visual: Most visual tokens per row (default N).
        same_count: Same visual count in every row (what batched ops require); False gives ragged batches.
        contiguous: One contiguous visual span per row (an image between text); False scatters them.

    Returns:
        A strategy for bool tensors of shape (B, N).
    """
    if shape is None:
        shape = (draw(st.integers(min_batch, max_batch)), draw(st.integers(min_tokens, max_tokens)))
    return _masks(draw, shape, min_visual, max_visual, same_count, contiguous)


@st.composite
def protected_masks(
    draw: st.DrawFn,
    *,
    shape: tuple[int, int],
    min_protected: int = 0,
    max_protected: int | None = None,
    same_count: bool = True,
) -> Tensor:
    """Masks of protected tokens (text, CLS, ...) at arbitrary positions: True = never removed.

    Args:
        shape: (B, N) of the tokens the mask applies to.
        min_protected: Fewest protected tokens per row (capped at N).
        max_protected: Most protected tokens per row (default N).
        same_count: Same count in every row; False gives ragged batches.

    Returns:
        A strategy for bool tensors of shape (B, N).
    """
    return _masks(draw, shape, min_protected, max_protected, same_count, contiguous=False)


@st.composite
def token_grids(
    draw: st.DrawFn,
    *,
    min_batch: int = 1,
    max_batch: int = 3,
    min_side: int = 1,
    max_side: int = 8,
    min_dim: int = 1,
    max_dim: int = 4,
) -> tuple[Tensor, tuple[int, int]]:
    """Row-major token grids, as produced by a ViT patch embedding.

    Args:
        min_batch: Smallest batch size B.
        max_batch: Largest batch size B.
        min_side: Smallest grid side.
        max_side: Largest grid side.
        min_dim: Smallest feature width C.
        max_dim: Largest feature width C.

    Returns:
        A strategy for ``(x, (H, W))`` with ``x`` float32 of shape (B, H*W, C).
    """
    height, width = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    batch, dim = draw(st.integers(min_batch, max_batch)), draw(st.integers(min_dim, max_dim))
    return draw(token_batches(shape=(batch, height * width, dim))), (height, width)


@overload
def budgets(
    *, n: int | None = None, min_value: int = 0, max_value: int | None = None, ratio: Literal[False] = False
) -> st.SearchStrategy[int]: ...


@overload
def budgets(
    *, n: int | None = None, min_value: int = 0, max_value: int | None = None, ratio: Literal[True]
) -> st.SearchStrategy[float]: ...


def budgets(
    *, n: int | None = None, min_value: int = 0, max_value: int | None = None, ratio: bool = False
) -> st.SearchStrategy[int] | st.SearchStrategy[float]:
    """Reduction budgets: token counts (a merge ``r`` or a keep ``k``) or keep ratios.

    Args:
        n: Number of tokens the budget applies to; counts are then drawn from ``[min_value, n]``.
        min_value: Smallest count (may be negative to exercise ``r <= 0`` handling).
        max_value: Largest count when ``n`` is None (default 64); may exceed N to exercise clipping.
        ratio: Draw keep ratios in [0, 1] instead of counts.

    Returns:
        A strategy for ints, or for floats in [0, 1] when ``ratio`` is True.
    """
    if ratio:
        return st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
    hi = n if n is not None else (64 if max_value is None else max_value)
    return st.integers(min_value=min(min_value, hi), max_value=hi)


def seeds() -> st.SearchStrategy[int]:
    """Seeds accepted by ``torch.Generator.manual_seed``.

    Returns:
        A strategy for ints in ``[0, 2**32)``.
    """
    return st.integers(min_value=0, max_value=2**32 - 1)
