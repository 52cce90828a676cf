"""Pure tensor functions of the KV-cache stage: key importance from queries and keys, per-layer eviction counts
from one global cutoff (PrefixKV), and the rectangular keep index of a padded batch.

Example:
    >>> import torch
    >>> imp = torch.tensor([[5.0, 1.0, 3.0, 0.5, 2.0, 0.1, 4.0]])
    >>> real = torch.ones(1, 7, dtype=torch.bool)
    >>> kv_keep_index(imp, real, torch.tensor([5]), first=2, last=1)
    tensor([[0, 1, 2, 4, 6]])
"""

from __future__ import annotations

import torch

from tokred.ops.attention import attention_rows


@torch.no_grad()
def key_importance(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scaling: float,
    real: torch.Tensor | None = None,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Attention each key receives in a causal prefill: head-mean probabilities summed over the real query rows.

    Args:
        query: Post-RoPE queries of every token, shape (B, H, N, D).
        key: Post-RoPE keys of every token, shape (B, H_kv, N, D).
        scaling: Softmax scale.
        real: Real (non-padding) tokens, shape (B, N) bool; padding is neither a query row nor a key.
        chunk_size: Query rows per softmax block (bounds memory to B x H x chunk x N floats).

    Returns:
        Importance of every key, shape (B, N), float32 (0 for padding).
    """
    b, _, n, _ = query.shape
    mask = torch.ones(b, n, dtype=torch.bool, device=query.device) if real is None else real.bool()
    out = torch.zeros(b, n, dtype=torch.float32, device=query.device)
    for lo in range(0, n, chunk_size):
        hi = min(n, lo + chunk_size)
        index = torch.arange(lo, hi, device=query.device).expand(b, -1)  # (B, c)
        probs = attention_rows(query[:, :, lo:hi], key, scaling=scaling, query_index=index, key_mask=mask)
        rows = probs.nan_to_num(0.0).mean(dim=1)  # (B, c, N): a padding row sees no key (NaN) and carries nothing
        out += (rows * mask[:, lo:hi, None]).sum(dim=1)
    return out * mask


def cutoff_evictions(importance: list[torch.Tensor], target: float, protect: int, iterations: int = 60) -> list[int]:
    """PrefixKV's offline step: per-layer evictions from one global cutoff on the layers' cumulative distributions.

    Each layer's importance is sorted in descending order and normalised into a cumulative distribution; for a cutoff
    ``p`` in (0, 1) the layer keeps the tokens needed to reach ``p`` (``searchsorted`` from the left, plus one) and
    evicts the rest, less ``protect`` always-kept tokens (at least 0). ``p`` is found by bisection so that the total
    eviction is as close as possible to ``target``, then the counts are scaled to sum to ``target`` (floor).

    Args:
        importance: One (n,) float tensor per layer (the same n in every layer).
        target: Evictions wanted over all layers (``(1 - retention) * n * layers``).
        protect: Tokens of every layer that are never evicted (first tokens + the last).
        iterations: Bisection steps.

    Returns:
        Evictions per layer.
    """
    cdf = torch.stack([(s.sort(descending=True).values / s.sum().clamp_min(1e-30)).cumsum(0) for s in importance])
    n = cdf.shape[1]  # cdf: (L, n)

    def counts(p: float) -> torch.Tensor:
        index = torch.searchsorted(cdf, torch.full((cdf.shape[0], 1), p, dtype=cdf.dtype), right=False)[:, 0]
        return (n - (index + 1) - protect).clamp_min(0)  # (L,)

    lo, hi = 0.0, 1.0
    for _ in range(iterations):  # evictions fall as p grows
        mid = (lo + hi) / 2
        if float(counts(mid).sum()) > target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda p: abs(float(counts(p).sum()) - target))
    found = counts(best).double()
    total = float(found.sum())
    if total > 0:
        found = (found * target / total).floor()
    cap = max(0, n - protect)
    return [int(min(c, cap)) for c in found.tolist()]


def kv_keep_index(
    importance: torch.Tensor, real: torch.Tensor, keep: torch.Tensor, *, first: int = 4, last: int = 1
) -> torch.Tensor:
    """Which cache entries a layer keeps, rectangular over a padded batch.

    In every row the first ``first`` and the last ``last`` real tokens are kept, then the ``keep[b]`` highest-scoring
    real tokens in total; rows that keep fewer than the widest row are filled with their padding entries (masked in
    attention anyway), then with their next-best real tokens. Ties go to the lower index.

    Args:
        importance: Score of every entry (higher = keep), shape (B, N).
        real: Real tokens, shape (B, N) bool.
        keep: Real tokens to keep per row (protected ones included), shape (B,) long.
        first: Leading real tokens always kept.
        last: Trailing real tokens always kept.

    Returns:
        Kept entry indices, shape (B, K) with ``K = max(keep)``, ascending in each row.
    """
    b, n = importance.shape
    rank = real.long().cumsum(1) - 1  # (B, N) index among the row's real tokens
    count = real.long().sum(1, keepdim=True)  # (B, 1)
    protected = real & ((rank < first) | (rank >= count - last))  # (B, N)
    width = int(keep.max()) if keep.numel() else 0
    # priority tiers: protected > scored real > padding > the rest; a stable sort keeps the importance order
    order = importance.float().argsort(dim=1, descending=True, stable=True)  # (B, N)
    real_o, prot_o = real.gather(1, order), protected.gather(1, order)
    pos = (real_o & ~prot_o).long().cumsum(1) - 1  # (B, N) rank of each unprotected real token by importance
    chosen = prot_o | (real_o & ~prot_o & (pos < (keep[:, None] - prot_o.long().sum(1, keepdim=True))))
    tier = torch.where(chosen, 0, torch.where(~real_o, 1, 2))  # (B, N)
    picked = order.gather(1, tier.argsort(dim=1, stable=True))[:, :width]  # (B, K)
    return picked.sort(dim=1).values
