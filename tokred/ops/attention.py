"""Attention-derived token scores computed from queries and keys, never from ``output_attentions``.

These functions compute softmax rows only for the queries that a scorer needs (FastV: the last token), or walk
all queries in bounded-memory chunks (AIM's PageRank), so that the model itself can keep running its stock SDPA.

Example:
    >>> import torch
    >>> q, k = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 6, 4)
    >>> attention_rows(q, k, scaling=0.5, query_index=torch.tensor([[5]])).shape
    torch.Size([1, 2, 1, 6])
"""

from __future__ import annotations

import torch


def expand_kv_heads(key: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Repeat grouped-query key heads so that there is one per query head.

    Args:
        key: Keys, shape (B, H_kv, N, D) with ``num_heads % H_kv == 0``.
        num_heads: Number of query heads H.

    Returns:
        Keys of shape (B, H, N, D) (a view when no repetition is needed).
    """
    b, h_kv, n, d = key.shape
    if h_kv == num_heads:
        return key
    if num_heads % h_kv:
        raise ValueError(f"{num_heads} query heads cannot share {h_kv} key heads evenly")
    return key[:, :, None].expand(b, h_kv, num_heads // h_kv, n, d).reshape(b, num_heads, n, d)


def _logit_mask(query_index: torch.Tensor, n_keys: int, key_mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """Allowed (query, key) pairs, shape (B, 1, Q, N) bool."""
    keys = torch.arange(n_keys, device=query_index.device)  # (N,)
    allowed = (
        keys[None, None, :] <= query_index[:, :, None]
        if causal
        else torch.ones(*query_index.shape, n_keys, dtype=torch.bool, device=query_index.device)
    )  # (B, Q, N)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, :].bool()
    return allowed[:, None]


def attention_logits(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scaling: float,
    query_index: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Masked attention logits for some query rows, in float32 (masked entries are ``-inf``).

    Args:
        query: Queries, shape (B, H, Q, D).
        key: Keys, shape (B, H_kv, N, D).
        scaling: Logit scale, usually ``D ** -0.5``.
        query_index: Sequence position of every query row, shape (B, Q); with ``causal`` a query sees keys up to
            and including its own position.
        key_mask: Which keys are real tokens (not padding), shape (B, N) bool.
        causal: Apply the causal rule.

    Returns:
        Logits of shape (B, H, Q, N).
    """
    k = expand_kv_heads(key, query.shape[1]).float()  # (B, H, N, D)
    logits = torch.matmul(query.float(), k.transpose(-1, -2)) * scaling  # (B, H, Q, N)
    allowed = _logit_mask(query_index, key.shape[2], key_mask, causal)  # (B, 1, Q, N)
    return logits.masked_fill(~allowed, float("-inf"))


def attention_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scaling: float,
    query_index: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Attention probabilities of some query rows (what eager attention would return for them).

    Args:
        query: Queries, shape (B, H, Q, D).
        key: Keys, shape (B, H_kv, N, D).
        scaling: Logit scale.
        query_index: Sequence position of every query row, shape (B, Q).
        key_mask: Which keys are real tokens, shape (B, N) bool.
        causal: Apply the causal rule.

    Returns:
        Row-stochastic probabilities, shape (B, H, Q, N), float32.
    """
    logits = attention_logits(query, key, scaling=scaling, query_index=query_index, key_mask=key_mask, causal=causal)
    return torch.softmax(logits, dim=-1)  # (B, H, Q, N)


@torch.no_grad()
def pagerank_importance(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scaling: float,
    key_mask: torch.Tensor | None = None,
    temperature: float = 0.1,
    iterations: int = 5,
    chunk_size: int = 1024,
    max_matrix_bytes: int = 64 * 2**20,
) -> torch.Tensor:
    """AIM's multi-modal importance: PageRank over the sharpened attention matrix, RMS over heads.

    ``M_h = softmax((Q_h K_h^T * scaling + mask) / temperature)``, ``pi_h = 1/N`` then ``pi_h <- pi_h M_h``
    ``iterations`` times, and ``s = sqrt(mean_h pi_h ** 2)`` (AIM, arXiv:2412.03248 §3.3). Memory stays bounded:
    as many heads' N x N matrices at a time as fit in ``max_matrix_bytes`` (at least one), each filled in chunks
    of ``chunk_size`` query rows, instead of AIM's H x N x N (at N = 6,400 one head is 164 MB, all 28 are 4.5 GB).
    Grouped key heads are indexed, never copied.

    Args:
        query: Queries of every token, shape (B, H, N, D).
        key: Keys of every token, shape (B, H_kv, N, D).
        scaling: Logit scale.
        key_mask: Which tokens are real (padding neither attends nor is attended), shape (B, N) bool.
        temperature: Softmax temperature tau.
        iterations: Power iterations.
        chunk_size: Query rows per chunk while building the matrices.
        max_matrix_bytes: Memory budget of the matrices built at once.

    Returns:
        Importance of every token, shape (B, N), float32; padding tokens score 0.
    """
    b, h, n, _ = query.shape
    group = h // key.shape[1]
    valid = torch.ones(b, n, dtype=torch.bool, device=query.device) if key_mask is None else key_mask.bool()
    start = valid.float() / valid.sum(-1, keepdim=True).clamp_min(1).float()  # (B, N) uniform over real tokens
    sq_sum = torch.zeros(b, n, dtype=torch.float32, device=query.device)
    step = max(1, min(h, max_matrix_bytes // max(1, b * n * n * 4)))  # heads per pass
    for lo in range(0, h, step):
        heads = torch.arange(lo, min(h, lo + step), device=query.device)
        q = query[:, heads].flatten(0, 1)  # (B*h', N, D)
        k = key[:, heads // group].flatten(0, 1)  # (B*h', N, D)
        m = _sharpened_matrix(q, k, valid.repeat_interleave(len(heads), 0), scaling / temperature, chunk_size)
        pi = start.repeat_interleave(len(heads), 0)  # (B*h', N)
        for _ in range(iterations):
            pi = torch.bmm(pi[:, None, :], m)[:, 0]  # (B*h', N)
        sq_sum += pi.square().view(b, len(heads), n).sum(1)
        del m
    return (sq_sum / h).sqrt()  # (B, N)


def _sharpened_matrix(
    q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, scale: float, chunk_size: int
) -> torch.Tensor:
    """Row-stochastic ``softmax(q k^T * scale + causal/padding mask)`` for a batch of heads, built in row chunks.

    Every step works in place on the output, so the only memory beyond the (G, N, N) result is one chunk's mask.

    Args:
        q: Queries, shape (G, N, D) (G = batch x heads).
        k: Keys of the matching key heads, shape (G, N, D).
        valid: Real tokens, shape (G, N) bool.
        scale: ``scaling / temperature``.
        chunk_size: Rows per chunk.

    Returns:
        The matrices, shape (G, N, N), float32; rows of padding tokens are zero.
    """
    g, n, _ = q.shape
    m = torch.empty(g, n, n, dtype=torch.float32, device=q.device)
    kt = k.float().transpose(-1, -2)  # (G, D, N)
    padded = not bool(valid.all())
    for lo in range(0, n, chunk_size):
        hi = min(n, lo + chunk_size)
        block = m[:, lo:hi]  # (G, c, N) view
        if block.is_contiguous():
            torch.bmm(q[:, lo:hi].float(), kt, out=block)
        else:
            block.copy_(torch.bmm(q[:, lo:hi].float(), kt))
        block.mul_(scale)
        future = torch.ones(hi - lo, n, dtype=torch.bool, device=q.device).triu_(lo + 1)  # key after the query
        block.masked_fill_(future, float("-inf"))
        if padded:
            block.masked_fill_(~valid[:, None, :], float("-inf"))
        block.sub_(block.amax(-1, keepdim=True)).exp_()
        block.div_(block.sum(-1, keepdim=True))
        if padded:  # rows of padding queries saw no key: NaN -> 0, and they carry no mass
            block.nan_to_num_(0.0).mul_(valid[:, lo:hi, None])
    return m
