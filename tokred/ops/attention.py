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
    chunk_size: int = 64,
    max_matrix_bytes: int = 64 * 2**20,
    query_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """AIM's multi-modal importance: PageRank over the sharpened attention matrix, RMS over heads.

    ``M_h = softmax((Q_h K_h^T * scaling + mask) / temperature)``, ``pi_h = 1/N`` then ``pi_h <- pi_h M_h``
    ``iterations`` times, and ``s = sqrt(mean_h pi_h ** 2)`` (AIM, arXiv:2412.03248 §3.3). All iterations run in
    one sweep over row chunks of the causal M, last chunk first (see `_pagerank_sweep`), so M is never stored:
    memory is one chunk of rows (``chunk_size`` x N per head) for as many heads at a time as fit in
    ``max_matrix_bytes`` (at least one key head's group), instead of AIM's dense H x N x N (4.5 GB at N = 6,400
    and 28 heads). Only the causal triangle is computed, and the query heads that share a key head are stacked
    into one matrix product with it (grouped keys are never copied).

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
        chunk_size: Query rows per chunk (smaller chunks follow the triangle more closely and need less memory).
        max_matrix_bytes: Memory budget of the chunk matrices built at once.

    Returns:
        Importance of every token, shape (B, N), float32; padding tokens score 0.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    b, h, n, _ = query.shape
    h_kv = key.shape[1]
    group = h // h_kv
    valid = torch.ones(b, n, dtype=torch.bool, device=query.device) if key_mask is None else key_mask.bool()
    rows = valid if query_mask is None else query_mask.bool()  # (B, N)
    start = rows.float() / rows.sum(-1, keepdim=True).clamp_min(1).float()  # (B, N) uniform over query rows
    sq_sum = torch.zeros(b, n, dtype=torch.float32, device=query.device)
    kv_bytes = b * group * 8 * min(n, chunk_size) * n  # one key head's chunk: logits and probabilities
    step = max(1, min(h_kv, max_matrix_bytes // max(1, kv_bytes)))  # key heads per pass
    for lo in range(0, h_kv, step):
        hk = min(h_kv, lo + step) - lo
        g = hk * group  # query heads of this pass
        pi = _pagerank_sweep(
            query[:, lo * group : lo * group + g],
            key[:, lo : lo + hk],
            scaling / temperature,
            chunk_size,
            iterations,
            valid.repeat_interleave(g, 0),
            rows.repeat_interleave(g, 0),
            start.repeat_interleave(g, 0),
        )  # (B*g, N)
        sq_sum += pi.square().view(b, g, n).sum(1)
    return (sq_sum / h).sqrt()  # (B, N)


def _chunk_probs(
    q: torch.Tensor,
    kt: torch.Tensor,
    future: torch.Tensor,
    scale: float,
    valid: torch.Tensor | None,
    buffers: torch.Tensor,
) -> torch.Tensor:
    """Rows ``[lo, hi)`` of the causal ``softmax(q k^T * scale + mask)``, keys ``[0, hi)`` only (``hi = lo + c``).

    Args:
        q: The chunk's queries, shape (G_kv, group x c, D): the ``group`` query heads of a key head stacked.
        kt: Transposed keys up to the chunk's last row, shape (G_kv, D, hi).
        future: The causal mask of the diagonal tile, ``-inf`` above the diagonal and 0 elsewhere, shape (c, c).
        scale: ``scaling / temperature`` (applied inside the matrix product, BLAS ``alpha``).
        valid: Keys that may be attended, shape (G, hi) bool (G = G_kv x group), or ``None`` for all.
        buffers: Reused memory for the logits and the probabilities, shape (2, >= G x c x hi) float32.

    Returns:
        Probabilities, shape (G, c, hi), float32 (a view of ``buffers[1]``); a row that sees no key is all zeros.
    """
    g_kv, rows, hi = q.shape[0], q.shape[1], kt.shape[2]
    c, size = future.shape[0], q.shape[0] * q.shape[1] * kt.shape[2]
    logits = buffers[0, :size].view(g_kv, rows, hi)
    torch.baddbmm(logits, q, kt, beta=0.0, alpha=scale, out=logits)  # (G_kv, group*c, hi)
    logits = logits.view(-1, c, hi)  # (G, c, hi)
    logits[:, :, hi - c :].add_(future)
    if valid is not None:
        logits.masked_fill_(~valid[:, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1, out=buffers[1, :size].view(-1, c, hi))  # (G, c, hi)
    return probs if valid is None else probs.nan_to_num_(0.0)


def _pagerank_sweep(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    chunk_size: int,
    iterations: int,
    valid: torch.Tensor,
    rows: torch.Tensor,
    start: torch.Tensor,
) -> torch.Tensor:
    """``start M^iterations`` for a pass of heads, every iteration in one sweep over M's row chunks.

    Mass flows from a row to keys at or before it, so ``pi_t`` on rows ``[lo, hi)`` is final once every chunk of
    later rows has passed on ``pi_(t-1)``. Taking chunks last first, each chunk builds its rows of M once and runs
    all iterations with them: its diagonal tile (keys ``[lo, hi)``) in sequence, which completes ``pi_1 ..
    pi_T`` on ``[lo, hi)``, then the keys before ``lo`` receive every iteration's mass in one (T, c) x (c, lo)
    matrix product. The sums are those of ``pi <- pi M`` repeated, in another order.

    Args:
        q: Queries, shape (B, g, N, D) (g query heads sharing hk = g / group key heads).
        k: Their key heads, shape (B, hk, N, D).
        scale: ``scaling / temperature``.
        chunk_size: Rows per chunk.
        iterations: Power iterations T.
        valid: Tokens visible as keys, shape (G, N) bool (G = B x g).
        rows: Query rows that carry mass, shape (G, N) bool.
        start: Initial distribution, shape (G, N).

    Returns:
        ``pi_T``, shape (G, N), float32.
    """
    b, g, n, d = q.shape
    hk = k.shape[1]
    qf = q.float().reshape(b * hk, g // hk, n, d)  # (G_kv, group, N, D), a view when B == 1 or not grouped
    kt = k.float().flatten(0, 1).transpose(-1, -2)  # (G_kv, D, N), a view
    keys = None if bool(valid.all()) else valid
    weight = None if bool(rows.all()) else rows.float()[:, None]  # (G, 1, N): rows that pass mass on
    pis = torch.zeros(b * g, iterations + 1, n, dtype=torch.float32, device=q.device)  # pi_0 .. pi_T
    pis[:, 0] = start
    masks: dict[int, torch.Tensor] = {}
    buffers = torch.empty(2, b * g * min(n, chunk_size) * n, dtype=torch.float32, device=q.device)
    for lo in reversed(range(0, n, chunk_size)):
        hi = min(n, lo + chunk_size)
        if hi - lo not in masks:
            masks[hi - lo] = torch.full((hi - lo, hi - lo), float("-inf"), device=q.device).triu_(1)
        chunk = qf[:, :, lo:hi].flatten(1, 2)  # (G_kv, group*c, D)
        visible = None if keys is None else keys[:, :hi]
        probs = _chunk_probs(chunk, kt[:, :, :hi], masks[hi - lo], scale, visible, buffers)  # (G, c, hi)
        w = None if weight is None else weight[:, :, lo:hi]  # (G, 1, c)
        own = _diagonal_iterations(pis[:, :, lo:hi], probs[:, :, lo:], w)  # (G, T + 1, c), final
        pis[:, :, lo:hi] = own
        if lo:  # (G, T, c) x (G, c, lo): every iteration's mass to the keys before the chunk
            src = own[:, :iterations] if w is None else own[:, :iterations] * w
            pis[:, 1:, :lo].add_(torch.bmm(src, probs[:, :, :lo]))
    return pis[:, iterations]


def _diagonal_iterations(pis: torch.Tensor, diag: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Complete ``pi_1 .. pi_T`` on a chunk's rows from its diagonal tile.

    Args:
        pis: ``pi_0 .. pi_T`` on the chunk's rows, shape (G, T + 1, c): ``pi_0`` final, the others holding the mass
            of every later chunk.
        diag: The chunk's probabilities towards its own rows, shape (G, c, c).
        weight: 1 for the rows that pass mass on and 0 for the others, shape (G, 1, c), or ``None`` for all.

    Returns:
        The final ``pi_0 .. pi_T`` on the chunk's rows, shape (G, T + 1, c).
    """
    out = [pis[:, :1]]  # (G, 1, c)
    for t in range(1, pis.shape[1]):
        src = out[-1] if weight is None else out[-1] * weight
        out.append(torch.baddbmm(pis[:, t : t + 1], src, diag))  # (G, 1, c)
    return torch.cat(out, 1)


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
