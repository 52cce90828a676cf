"""Token selection: keep the top-k scored tokens (plus protected ones), seeded random scores, gathering.

Selections keep kept tokens in their original relative order (indices ascending), so position ids stay monotonic.
Use `tokred.ops.source_from_keep` to turn kept indices into provenance.

Example:
    >>> import torch
    >>> from tokred.ops import gather_tokens, random_keep, topk_keep
    >>> scores = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    >>> text = torch.tensor([[True, False, False, False]])  # protected (e.g. text) tokens are always kept
    >>> topk_keep(scores, 2, protected=text)
    tensor([[0, 1, 3]])
    >>> x = torch.randn(1, 4, 8)  # (B, N, C)
    >>> gather_tokens(x, topk_keep(scores, 2)).shape
    torch.Size([1, 2, 8])
    >>> torch.equal(random_keep(16, 4, batch=2, seed=0), random_keep(16, 4, batch=2, seed=0))
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gather_tokens", "protected_count", "random_keep", "random_scores", "topk_keep"]


def protected_count(protected: Tensor | None, batch: int, n: int) -> int:
    """Number of protected tokens per row, which must be the same in every row.

    Args:
        protected: Protected-token mask, shape (B, N), bool, or None (no protected tokens).
        batch: Expected batch size B.
        n: Expected number of tokens N.

    Returns:
        The common per-row count P (0 when ``protected`` is None).

    Raises:
        ValueError: If the mask has the wrong shape or dtype, or rows have different counts (a ragged batch).
    """
    if protected is None:
        return 0
    if protected.shape != (batch, n) or protected.dtype != torch.bool:
        raise ValueError(
            f"protected must be a bool tensor of shape {(batch, n)}, got {protected.dtype} {tuple(protected.shape)}"
        )
    counts = protected.sum(dim=1)  # (B,)
    if batch > 0 and bool((counts != counts[0]).any()):
        raise ValueError(
            f"ragged batch: rows have different numbers of protected tokens ({counts.tolist()}), so the kept "
            "indices would not form a rectangular tensor; pad rows to the same protected count or reduce each "
            "row separately"
        )
    return int(counts[0]) if batch > 0 else 0


@torch.no_grad()
def topk_keep(scores: Tensor, k: int, *, protected: Tensor | None = None) -> Tensor:
    """Indices to keep: every protected token plus the ``k`` highest-scoring unprotected tokens.

    Ties are broken deterministically in favour of the lower index. NaN scores sort above every number, so pass
    finite scores.

    Args:
        scores: Importance per token (higher = keep), shape (B, N).
        k: Unprotected tokens to keep; clipped to the N - P unprotected tokens.
        protected: Tokens that are always kept, shape (B, N), bool, with the same count P in every row.

    Returns:
        Kept indices, shape (B, P + min(k, N - P)), dtype long, ascending in each row.

    Raises:
        ValueError: If ``k < 0``, shapes are wrong, or the protected count differs between rows.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (B, N), got {tuple(scores.shape)}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    batch, n = scores.shape
    p = protected_count(protected, batch, n)
    k = min(k, n - p)
    order = scores.argsort(dim=1, descending=True, stable=True)  # (B, N)
    keep = torch.zeros_like(scores, dtype=torch.bool) if protected is None else protected.clone()  # (B, N)
    if protected is not None:
        # move protected tokens behind every candidate while keeping the candidates' score order
        flag = protected.gather(1, order).to(torch.uint8)  # (B, N)
        order = order.gather(1, flag.argsort(dim=1, stable=True))  # (B, N)
    keep.scatter_(1, order[:, :k], True)
    # stable sort of the mask lists the kept indices first, in ascending order, without a host sync
    return keep.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, : p + k]  # (B, P + k)


def random_scores(
    shape: tuple[int, int],
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform random scores in [0, 1) from an explicit seed or generator.

    With ``seed`` the result depends only on the seed (a private CPU generator is used, so the global RNG state is
    neither read nor advanced, and the values are the same on every device).

    Args:
        shape: Output shape (B, N).
        seed: Seed for a fresh generator.
        generator: Generator to draw from (advanced by the call); mutually exclusive with ``seed``.
        device: Device of the result. Without ``seed`` and ``generator`` the global RNG of this device is used.

    Returns:
        Scores, shape (B, N), float32.
    """
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    if generator is None:
        return torch.rand(shape, device=device)  # (B, N)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)  # (B, N)


def random_keep(
    n: int,
    k: int,
    *,
    batch: int,
    seed: int,
    protected: Tensor | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random baseline: keep the protected tokens plus ``k`` unprotected tokens drawn uniformly without replacement.

    Args:
        n: Number of tokens N.
        k: Unprotected tokens to keep (clipped as in `topk_keep`).
        batch: Batch size B; rows draw independently.
        seed: Seed; the same seed gives the same indices regardless of the global RNG state.
        protected: Always-kept tokens, shape (B, N), bool.
        device: Device of the result (defaults to the device of ``protected``).

    Returns:
        Kept indices, shape (B, P + min(k, N - P)), ascending in each row.
    """
    if device is None and protected is not None:
        device = protected.device
    return topk_keep(random_scores((batch, n), seed=seed, device=device), k, protected=protected)


def _expand_index(idx: Tensor, x: Tensor) -> Tensor:
    """Broadcast a token index of shape (B, K) over the trailing dims of ``x`` (B, N, ...) -> (B, K, ...)."""
    batch, k = idx.shape
    return idx.view(batch, k, *([1] * (x.dim() - 2))).expand(batch, k, *x.shape[2:])


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """Gather tokens along the token axis.

    Args:
        x: Tensor with shape (B, N, ...).
        idx: Token indices, shape (B, K).

    Returns:
        Tensor with shape (B, K, ...); differentiable with respect to ``x``.
    """
    if x.dim() < 2 or idx.dim() != 2 or x.shape[0] != idx.shape[0]:
        raise ValueError(
            f"expected x of shape (B, N, ...) and idx of shape (B, K), got {tuple(x.shape)} and {tuple(idx.shape)}"
        )
    return x.gather(1, _expand_index(idx, x))  # (B, K, ...)
