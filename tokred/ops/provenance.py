"""Provenance: which input tokens each output token came from.

A reduction (merge, selection, pooling) maps ``N_in`` input tokens onto ``N_out`` output tokens. Because every
reduction in tokred partitions its inputs (an input feeds at most one output), provenance is stored compactly as a
*source* vector: ``source[b, i]`` is the index of the output token that input ``i`` went into, or ``-1`` if the
input was dropped (pruned). A dense ``(B, N_out, N_in)`` boolean view is available for small cases.

Example:
    >>> import torch
    >>> from tokred.ops import compose_sources, group_sizes, source_from_keep
    >>> first = source_from_keep(torch.tensor([[0, 2, 3]]), n_in=4)  # keep tokens 0, 2, 3
    >>> first
    tensor([[ 0, -1,  1,  2]])
    >>> second = torch.tensor([[0, 0, 1]])  # then merge the first two survivors
    >>> compose_sources(first, second)
    tensor([[ 0, -1,  0,  1]])
    >>> group_sizes(compose_sources(first, second), n_out=2)
    tensor([[2, 1]])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "compose_sources",
    "group_sizes",
    "identity_source",
    "provenance_matrix",
    "source_from_keep",
]


def identity_source(batch: int, n: int, device: torch.device | str | None = None) -> Tensor:
    """Provenance of a no-op reduction: input ``i`` went into output ``i``.

    Args:
        batch: Batch size B.
        n: Number of tokens N.
        device: Device of the result.

    Returns:
        Source indices, shape (B, N), dtype long.
    """
    return torch.arange(n, device=device).expand(batch, n).clone()  # (B, N)


def compose_sources(first: Tensor, second: Tensor) -> Tensor:
    """Provenance of applying reduction ``second`` after reduction ``first``.

    Args:
        first: Source of the first reduction, shape (B, N0), values in ``[-1, N1)``.
        second: Source of the second reduction, shape (B, N1), values in ``[-1, N2)``.

    Returns:
        Source of the composed reduction, shape (B, N0), values in ``[-1, N2)``. Inputs dropped by either
        reduction are ``-1``.
    """
    if first.shape[0] != second.shape[0]:
        raise ValueError(f"batch sizes differ: first has {first.shape[0]} rows, second has {second.shape[0]}")
    if second.shape[1] == 0:
        # everything was dropped by `first` already (or there was nothing); gather would index an empty tensor
        return torch.full_like(first, -1)
    through = second.gather(1, first.clamp(min=0))  # (B, N0)
    return torch.where(first < 0, torch.full_like(first, -1), through)  # (B, N0)


def source_from_keep(keep_idx: Tensor, n_in: int) -> Tensor:
    """Provenance of a selection that keeps the inputs ``keep_idx`` (in that output order).

    Args:
        keep_idx: Kept input indices, shape (B, K); output ``j`` is input ``keep_idx[:, j]``.
        n_in: Number of input tokens N_in.

    Returns:
        Source, shape (B, N_in): ``j`` for the input kept as output ``j``, ``-1`` for dropped inputs.
    """
    batch, k = keep_idx.shape
    source = torch.full((batch, n_in), -1, dtype=torch.long, device=keep_idx.device)  # (B, N_in)
    out_pos = torch.arange(k, device=keep_idx.device).expand(batch, k)  # (B, K)
    return source.scatter(1, keep_idx.long(), out_pos)  # (B, N_in)


def provenance_matrix(source: Tensor, n_out: int) -> Tensor:
    """Dense provenance: ``M[b, j, i]`` is True iff input ``i`` went into output ``j``.

    Meant for tests and small inspections; memory is ``B * n_out * N_in``.

    Args:
        source: Source indices, shape (B, N_in), values in ``[-1, n_out)``.
        n_out: Number of output tokens.

    Returns:
        Boolean matrix, shape (B, n_out, N_in). Columns of dropped inputs are all False.
    """
    outputs = torch.arange(n_out, device=source.device).view(1, n_out, 1)  # (1, n_out, 1)
    return source.unsqueeze(1) == outputs  # (B, n_out, N_in)


def group_sizes(source: Tensor, n_out: int) -> Tensor:
    """Number of inputs that went into each output.

    Args:
        source: Source indices, shape (B, N_in), values in ``[-1, n_out)``.
        n_out: Number of output tokens.

    Returns:
        Counts, shape (B, n_out), dtype long. Dropped inputs are not counted.
    """
    batch = source.shape[0]
    # shift by one so dropped inputs (-1) land in a bin that is then discarded
    counts = torch.zeros(batch, n_out + 1, dtype=torch.long, device=source.device)  # (B, n_out + 1)
    counts.scatter_add_(1, source.long() + 1, torch.ones_like(source, dtype=torch.long))
    return counts[:, 1:]  # (B, n_out)
