"""VidCom2's token selection for video: per-frame budgets from frame uniqueness, then distinctive tokens per frame.

All functions take a clip as ``(B, T * n, C)`` tokens, frame-major (frame ``t`` holds rows ``t * n .. t * n + n - 1``).
Features are computed in the input's dtype promoted to at least float32 (a bfloat16 model scores in float32, a float64
input stays float64).

Example:
    >>> import torch
    >>> from tokred.ops.vidcom import vidcom2_frame_budgets, vidcom2_keep_count
    >>> vidcom2_keep_count(32 * 196, 0.25)
    1568
    >>> x = torch.randn(1, 4 * 9, 8)
    >>> int(vidcom2_frame_budgets(x, 4, 0.25).sum())  # exactly floor(0.25 * 36) over the clip
    9
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokred.ops.counts import keep_count

__all__ = ["frame_uniqueness", "vidcom2_frame_budgets", "vidcom2_keep", "vidcom2_keep_count", "vidcom2_token_scores"]


def _frames(x: Tensor, frames: int) -> Tensor:
    """``x`` as (B, T, n, C) in a dtype of at least float32."""
    b, total, c = x.shape
    return x.to(torch.promote_types(x.dtype, torch.float32)).reshape(b, frames, total // frames, c)


def vidcom2_keep_count(total: int, ratio: float) -> int:
    """Tokens VidCom2 keeps of a clip of ``total`` tokens: ``max(1, floor(ratio * total))``, in exact arithmetic."""
    return max(1, keep_count(total, ratio, "floor")) if total else 0


def frame_uniqueness(x: Tensor, frames: int) -> Tensor:
    """Each frame's uniqueness ``-cos(f_t, g)``: ``f_t`` the mean of its tokens, ``g`` the mean of the ``f_t``.

    Args:
        x: Clip tokens, shape (B, T * n, C), frame-major.
        frames: ``T``.

    Returns:
        Uniqueness per frame, shape (B, T).
    """
    f = _frames(x, frames).mean(2)  # (B, T, C): frame-level features
    g = f.mean(1, keepdim=True)  # (B, 1, C): the video-level feature
    return -torch.nn.functional.cosine_similarity(f, g, dim=-1)  # (B, T)


def _capped_quotas(weights: Tensor, k: int, cap: int) -> Tensor:
    """Real quotas ``k * weights`` (rows sum to ``k``), water-filled so no frame exceeds ``cap``: a frame over the cap
    is fixed at it and its excess shared by the others in proportion to their weights. Shapes (B, T) -> (B, T)."""
    fixed = torch.zeros_like(weights, dtype=torch.bool)
    quota = weights * k
    for _ in range(weights.shape[1]):
        over = (quota > cap) & ~fixed
        if not over.any():
            break
        fixed |= over
        rest = k - cap * fixed.sum(1, keepdim=True)  # (B, 1)
        free_w = torch.where(fixed, 0.0, weights)
        quota = torch.where(fixed, float(cap), rest * free_w / free_w.sum(1, keepdim=True).clamp_min(1e-300))
    return quota


def vidcom2_frame_budgets(x: Tensor, frames: int, ratio: float, temperature: float = 0.01) -> Tensor:
    """VidCom2's Frame Compression Adjustment: tokens each frame keeps.

    ``sigma = softmax(uniqueness / temperature)`` over the frames; frame ``t``'s quota is
    ``K * (1 + sigma_t - 1/T) / T`` with ``K = vidcom2_keep_count(T * n, ratio)`` (the paper's
    ``r_t = r * (1 + sigma_t - 1/T)`` times ``n``), water-filled to at most ``n`` per frame, then rounded by largest
    remainder (ties to the earlier frame) so every row sums to exactly ``K``.

    Args:
        x: Clip tokens, shape (B, T * n, C), frame-major.
        frames: ``T``.
        ratio: Retention ratio of the clip, in ``(0, 1]``.
        temperature: Softmax temperature over the frame uniqueness (> 0).

    Returns:
        Tokens kept per frame, shape (B, T), int64, each row summing to ``K``.
    """
    n = x.shape[1] // frames
    k = vidcom2_keep_count(frames * n, ratio)
    u = frame_uniqueness(x, frames).double()  # (B, T): budgets in float64, away from rounding boundaries
    sigma = torch.softmax(u / temperature, dim=1)
    weights = (1.0 + sigma - 1.0 / frames) / frames  # (B, T), rows sum to 1
    quota = _capped_quotas(weights, k, n)
    base = quota.floor().clamp(0, n)  # (B, T)
    left = (k - base.sum(1)).long()  # (B,): remainder tokens, one each to the largest fractional parts
    order = torch.sort(-(quota - base), dim=1, stable=True).indices  # largest remainder first, earlier on ties
    rank = torch.argsort(order, dim=1)  # (B, T): each frame's place in that order
    return (base + (rank < left[:, None]).to(base.dtype)).long()


def vidcom2_token_scores(x: Tensor, frames: int) -> Tensor:
    """VidCom2's token similarity ``cos(x, g) + cos(x, f_t)`` to the video-level and its frame-level feature; the
    least similar (most distinctive) tokens are kept.

    Args:
        x: Clip tokens, shape (B, T * n, C), frame-major.
        frames: ``T``.

    Returns:
        Similarity per token, shape (B, T * n).
    """
    f = _frames(x, frames)  # (B, T, n, C)
    frame_mean = f.mean(2, keepdim=True)  # (B, T, 1, C)
    video_mean = frame_mean.mean(1, keepdim=True)  # (B, 1, 1, C)
    cos = torch.nn.functional.cosine_similarity
    return (cos(f, video_mean, dim=-1) + cos(f, frame_mean, dim=-1)).reshape(x.shape[0], -1)  # (B, T * n)


def vidcom2_keep(x: Tensor, frames: int, ratio: float, temperature: float = 0.01) -> Tensor:
    """VidCom2: in every frame keep its budget of most distinctive tokens (lowest `vidcom2_token_scores`), in order.

    Ties (equal similarity, e.g. duplicated tokens) go to the earlier token.

    Args:
        x: Clip tokens, shape (B, T * n, C), frame-major.
        frames: ``T``.
        ratio: Retention ratio of the clip, in ``(0, 1]``.
        temperature: Softmax temperature of the frame budgets.

    Returns:
        Kept token indices, shape (B, K), ascending, never crossing a frame's own budget.
    """
    b, total, _ = x.shape
    budgets = vidcom2_frame_budgets(x, frames, ratio, temperature).to(x.device)  # (B, T)
    sim = vidcom2_token_scores(x, frames).reshape(b, frames, -1)  # (B, T, n)
    order = torch.sort(sim, dim=2, stable=True).indices  # most distinctive first, earlier on ties
    rank = torch.argsort(order, dim=2)  # (B, T, n)
    keep = (rank < budgets[:, :, None]).reshape(b, total)  # (B, T * n), K per row
    return keep.nonzero()[:, 1].reshape(b, -1)  # (B, K)
