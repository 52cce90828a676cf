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
    chunk_size: int = 128,
    max_matrix_bytes: int = 64 * 2**20,
    query_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """AIM's multi-modal importance: PageRank over the sharpened attention matrix, RMS over heads.

    ``M_h = softmax((Q_h K_h^T * scaling + mask) / temperature)``, ``pi_h = 1/N`` then ``pi_h <- pi_h M_h``
    ``iterations`` times, and ``s = sqrt(mean_h pi_h ** 2)`` (AIM, arXiv:2412.03248 §3.3). Memory stays bounded:
    the causal matrix is stored as row chunks of its lower triangle only (a chunk of rows ``[lo, hi)`` can only
    see keys ``[0, hi)``), for as many heads at a time as fit in ``max_matrix_bytes`` (at least one), instead of
    AIM's dense H x N x N (at N = 6,400 one head's triangle is 84 MB, AIM's 28 full matrices 4.5 GB). The
    triangle also halves the work of building the matrix and of every power iteration. Grouped key heads are
    indexed, never copied.

    Args:
        query: Queries of every token, shape (B, H, N, D).
        key: Keys of every token, shape (B, H_kv, N, D).
        scaling: Logit scale.
        key_mask: Which tokens can be attended (padding, and tokens pruned in mask mode, are not), shape (B, N)
            bool.
        query_mask: Which tokens are query rows: they start with mass ``1 / count`` and pass it on along their
            rows, shape (B, N) bool; ``None`` means ``key_mask``. AIM's reference keeps tokens it pruned as query
            rows (uniform start over all N tokens) while hiding them as keys: pass the real tokens here and the
            still visible ones as ``key_mask``.
        temperature: Softmax temperature tau.
        iterations: Power iterations (>= 1).
        chunk_size: Query rows per chunk (smaller chunks follow the triangle more closely).
        max_matrix_bytes: Memory budget of the matrices built at once.

    Returns:
        Importance of every token, shape (B, N), float32; padding tokens score 0.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    b, h, n, _ = query.shape
    group = h // key.shape[1]
    valid = torch.ones(b, n, dtype=torch.bool, device=query.device) if key_mask is None else key_mask.bool()
    rows = valid if query_mask is None else query_mask.bool()  # (B, N)
    start = rows.float() / rows.sum(-1, keepdim=True).clamp_min(1).float()  # (B, N) uniform over query rows
    sq_sum = torch.zeros(b, n, dtype=torch.float32, device=query.device)
    head_bytes = b * 4 * n * (n + chunk_size) // 2  # one head's stored triangle, all batch rows
    step = max(1, min(h, max_matrix_bytes // max(1, head_bytes)))  # heads per pass
    for lo in range(0, h, step):
        heads = torch.arange(lo, min(h, lo + step), device=query.device)
        q = query[:, lo : lo + len(heads)].flatten(0, 1)  # (B*h', N, D), a view when B == 1
        k = (key[:, lo : lo + len(heads)] if group == 1 else key[:, heads // group]).flatten(0, 1)  # (B*h', N, D)
        pi, blocks = _sharpened_blocks(
            q,
            k,
            valid.repeat_interleave(len(heads), 0),
            scaling / temperature,
            chunk_size,
            rows.repeat_interleave(len(heads), 0),
            start.repeat_interleave(len(heads), 0),
        )  # pi: the first power iteration, fused into the pass that builds the blocks
        for _ in range(iterations - 1):
            pi = _propagate(pi, blocks)
        sq_sum += pi.square().view(b, len(heads), n).sum(1)
        del blocks
    return (sq_sum / h).sqrt()  # (B, N)


def _sharpened_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    valid: torch.Tensor,
    scale: float,
    chunk_size: int,
    rows: torch.Tensor,
    start: torch.Tensor,
) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor, torch.Tensor]]]:
    """Row chunks of the causal ``softmax(q k^T * scale + mask)`` for a batch of heads, and ``start @ softmax``.

    Rows ``[lo, hi)`` attend keys ``[0, hi)`` only, so each chunk stores just those columns; the causal mask is
    needed on the chunk's diagonal tile alone. The scale is applied inside the matrix product (BLAS ``alpha``).
    A chunk is stored as its unnormalised exponentials ``E`` (computed in place, no second buffer) with a weight
    per row, ``1 / rowsum`` (0 for rows that carry no mass), so ``pi M = (pi * weight) E`` needs no division pass;
    the first power iteration is accumulated while each chunk is still in cache.

    Args:
        q: Queries, shape (G, N, D) (G = batch x heads).
        k: Keys of the matching key heads, shape (G, N, D).
        valid: Tokens visible as keys, shape (G, N) bool.
        scale: ``scaling / temperature``.
        chunk_size: Rows per chunk.
        rows: Query rows that carry mass, shape (G, N) bool.
        start: Initial distribution, shape (G, N).

    Returns:
        ``start M`` (G, N), and ``(lo, exp_block, weight)`` triples, ``exp_block`` of shape (G, hi - lo, hi) and
        ``weight`` of shape (G, hi - lo), float32.
    """
    g, n, _ = q.shape
    qf, kt = q.float(), k.float().transpose(-1, -2)  # (G, N, D), (G, D, N)
    padded = not bool(valid.all() and rows.all())
    blocks = []
    first = torch.zeros(g, n, dtype=torch.float32, device=q.device)  # (G, N)
    for lo in range(0, n, chunk_size):
        hi = min(n, lo + chunk_size)
        logits = torch.empty(g, hi - lo, hi, dtype=torch.float32, device=q.device)
        torch.baddbmm(logits, qf[:, lo:hi], kt[:, :, :hi], beta=0.0, alpha=scale, out=logits)  # (G, c, hi)
        future = torch.ones(hi - lo, hi - lo, dtype=torch.bool, device=q.device).triu_(1)  # key after query
        logits[:, :, lo:hi].masked_fill_(future, float("-inf"))
        if padded:
            logits.masked_fill_(~valid[:, None, :hi], float("-inf"))
        block = logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()  # (G, c, hi) unnormalised, in place
        if padded:  # a row that saw no key is NaN: it carries no mass
            block.nan_to_num_(0.0)
        total = block.sum(dim=-1)  # (G, c)
        weight = torch.where(rows[:, lo:hi] & (total > 0), 1.0 / total.clamp_min(1e-38), 0.0)  # (G, c)
        first[:, :hi] += torch.bmm((start[:, lo:hi] * weight)[:, None], block)[:, 0]  # (G, hi)
        blocks.append((lo, block, weight))
    return first, blocks


def _propagate(pi: torch.Tensor, blocks: list[tuple[int, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One power-iteration step ``pi M`` over the stored row chunks of M.

    Args:
        pi: Current distribution, shape (G, N).
        blocks: The chunks from :func:`_sharpened_blocks`.

    Returns:
        ``pi M``, shape (G, N).
    """
    out = torch.zeros_like(pi)  # (G, N)
    for lo, block, weight in blocks:
        c, hi = block.shape[1], block.shape[2]
        out[:, :hi] += torch.bmm((pi[:, lo : lo + c] * weight)[:, None], block)[:, 0]  # (G, hi)
    return out


@torch.no_grad()
def attention_map_rank(probs: torch.Tensor, *, zero_diagonal: bool = True) -> torch.Tensor:
    """Numerical rank of every head's attention map (gamma-MoD's ARank, arXiv:2410.13859).

    Args:
        probs: Attention probabilities, shape (B, H, N, N) (row = query, column = key; causal rows sum to 1).
        zero_diagonal: Zero each token's attention to itself first, as the paper does.

    Returns:
        The rank of each (N, N) map, shape (B, H), int64: the number of singular values above
        ``N * eps * sigma_max`` (``torch.linalg.matrix_rank``'s default tolerance) in float32.

    Example:
        >>> probs = torch.tril(torch.ones(1, 1, 4, 4)) / torch.arange(1, 5.0)[:, None]  # uniform causal rows
        >>> attention_map_rank(probs).tolist()  # strictly lower triangular after zeroing: rank N - 1
        [[3]]
    """
    maps = probs.float()
    if zero_diagonal:
        n = maps.shape[-1]
        maps = maps.masked_fill(torch.eye(n, dtype=torch.bool, device=maps.device), 0.0)  # (B, H, N, N)
    return torch.linalg.matrix_rank(maps)  # (B, H)
