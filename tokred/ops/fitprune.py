"""FitPrune's attention statistics and its per-layer deletion rule, as pure tensor functions.

Example:
    >>> import torch
    >>> fit_deletions(torch.tensor([0.1, 0.4, 0.2, 0.3]), full_sum=1.0, alpha=0.35)
    2
"""

from __future__ import annotations

import torch

from tokred.ops.attention import attention_rows


@torch.no_grad()
def cross_self_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scaling: float,
    visual: torch.Tensor,
    real: torch.Tensor | None = None,
    chunk_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FitPrune's cross and self attention of every key, from head-max attention probabilities.

    ``M = max_h softmax(q k^T * scaling)`` (causal, padding keys masked). For key ``j``: cross = sum over the real text
    queries after the last visual token of ``M[q, j]`` divided by their count; self = sum over the visual queries of
    ``M[q, j]`` divided by the number of visual tokens.

    Args:
        query: Post-RoPE queries of every token, shape (B, H, N, D).
        key: Post-RoPE keys, shape (B, H_kv, N, D).
        scaling: Softmax scale.
        visual: Visual tokens, shape (B, N) bool.
        real: Real tokens, shape (B, N) bool (default all).
        chunk_size: Query rows per block.

    Returns:
        ``(cross, self)``, each of shape (B, N), float32.
    """
    b, _, n, _ = query.shape
    real = torch.ones(b, n, dtype=torch.bool, device=query.device) if real is None else real.bool()
    pos = torch.arange(n, device=query.device)
    last_visual = torch.where(visual, pos, -1).amax(dim=1, keepdim=True)  # (B, 1)
    after = real & (pos[None] > last_visual) & ~visual  # (B, N) text queries after the image
    w_cross = after.float() / after.sum(1, keepdim=True).clamp_min(1).float()  # (B, N)
    w_self = visual.float() / visual.sum(1, keepdim=True).clamp_min(1).float()  # (B, N)
    cross = torch.zeros(b, n, dtype=torch.float32, device=query.device)
    self_ = torch.zeros_like(cross)
    for lo in range(0, n, chunk_size):
        hi = min(n, lo + chunk_size)
        rows = w_cross[:, lo:hi] + w_self[:, lo:hi]
        if not bool((rows > 0).any()):
            continue
        index = pos[lo:hi].expand(b, -1)  # (B, c)
        probs = attention_rows(query[:, :, lo:hi], key, scaling=scaling, query_index=index, key_mask=real)
        m = probs.nan_to_num(0.0).amax(dim=1)  # (B, c, N) head max
        cross += (m * w_cross[:, lo:hi, None]).sum(dim=1)
        self_ += (m * w_self[:, lo:hi, None]).sum(dim=1)
    return cross, self_


def fit_deletions(scores: torch.Tensor, *, full_sum: float, alpha: float) -> int:
    """How many of the lowest-scoring tokens can go while the remaining sum stays >= ``(1 - alpha) * full_sum``.

    Args:
        scores: Scores of the candidate tokens, shape (V,).
        full_sum: The same sum in the unpruned model.
        alpha: Tolerated loss of attention mass, in [0, 1].

    Returns:
        The largest ``k`` in ``[0, V]`` whose deletion keeps the remaining sum above the threshold (0 if none).
    """
    ascending = scores.double().sort().values  # (V,)
    remaining = scores.double().sum() - torch.cat([ascending.new_zeros(1), ascending.cumsum(0)])  # (V + 1,)
    ok = remaining >= (1.0 - alpha) * full_sum  # non-increasing in k
    return max(int(ok.sum()) - 1, 0)


def intersect_lowest(cross: torch.Tensor, self_: torch.Tensor, k_cross: int, k_self: int) -> torch.Tensor:
    """Tokens among both the ``k_cross`` lowest by cross score and the ``k_self`` lowest by self score.

    Args:
        cross: Cross scores of the candidates, shape (V,).
        self_: Self scores, shape (V,).
        k_cross: Deletions allowed by the cross rule.
        k_self: Deletions allowed by the self rule.

    Returns:
        Candidate positions to delete, shape (D,) long, ascending.
    """
    low_c = torch.zeros(cross.shape[0], dtype=torch.bool, device=cross.device)
    low_s = torch.zeros_like(low_c)
    low_c[cross.argsort(stable=True)[:k_cross]] = True
    low_s[self_.argsort(stable=True)[:k_self]] = True
    return torch.nonzero(low_c & low_s)[:, 0]
