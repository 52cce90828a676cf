"""Temporal token ops for video: per-position change between consecutive frames and EVS's selection.

All functions take a clip as ``(B, T * n, C)`` tokens, frame-major (frame ``t`` holds rows ``t * n .. t * n + n - 1``,
the same spatial order in every frame).
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import Tensor

from tokred.ops.counts import exact_ratio, keep_count

__all__ = ["evs_keep", "evs_keep_count", "frame_dissimilarity"]


def frame_dissimilarity(x: Tensor, frames: int) -> Tensor:
    """``1 - cos`` between each token and the token at the same position of the previous frame; ``+inf`` on frame 0.

    Args:
        x: Clip tokens, shape (B, T * n, C), frame-major.
        frames: ``T``.

    Returns:
        Dissimilarity per token, shape (B, T * n), float32.
    """
    b, total, c = x.shape
    n = total // frames
    f = x.float().reshape(b, frames, n, c)  # (B, T, n, C)
    cos = torch.nn.functional.cosine_similarity(f[:, 1:], f[:, :-1], dim=-1)  # (B, T - 1, n)
    first = torch.full((b, 1, n), float("inf"), device=x.device)
    return torch.cat([first, 1.0 - cos], 1).reshape(b, total)  # (B, T * n)


def evs_keep_count(frames: int, per_frame: int, rate: float) -> int:
    """Tokens EVS keeps of a clip: ``max(per_frame, floor(T * per_frame * (1 - rate)))``, in exact arithmetic."""
    keep = Fraction(1) - exact_ratio(rate)
    return max(per_frame, keep_count(frames * per_frame, keep, "floor"))


def evs_keep(x: Tensor, frames: int, rate: float) -> Tensor:
    """EVS: keep the ``evs_keep_count`` tokens most changed from the previous frame (frame 0 always), in original order.

    Ties (equal dissimilarity, e.g. a static background) go to the earlier token.

    Args:
        x: Clip tokens, shape (B, T * n, C), frame-major.
        frames: ``T``.
        rate: Fraction of the clip's tokens to prune (``video_pruning_rate``), in ``[0, 1)``.

    Returns:
        Kept token indices, shape (B, K), ascending.
    """
    total = x.shape[1]
    k = evs_keep_count(frames, total // frames, rate)
    score = frame_dissimilarity(x, frames)  # (B, T * n)
    order = torch.sort(-score, dim=1, stable=True).indices  # (B, T * n): most changed first, earlier first on ties
    return order[:, :k].sort(dim=1).values  # (B, K)
