"""Diversity-based selection: max-min diversity (DivPrune), greedy DPP MAP inference (CDPruner), pivots (DART).

Both select a subset of tokens that covers the feature space instead of ranking tokens one by one. The selections
return kept indices in ascending order (the kept tokens keep their relative order), with every protected token kept
and never a candidate; turn them into provenance with `tokred.ops.source_from_keep`.

Example:
    >>> import torch
    >>> from tokred.ops import cosine_similarity_matrix, dpp_greedy_keep, max_min_diversity_keep
    >>> x = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]]])  # (B, N, C)
    >>> max_min_diversity_keep(x, 2)  # the two most distant directions
    tensor([[0, 3]])
    >>> dpp_greedy_keep(cosine_similarity_matrix(x), 2)
    tensor([[0, 2]])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tokred.ops.selection import protected_count

__all__ = [
    "cdpruner_kernel",
    "cosine_similarity_matrix",
    "dart_embedding_keep",
    "dart_keep",
    "dart_quota",
    "dart_visit_order",
    "dpp_greedy_keep",
    "dpp_greedy_order",
    "max_min_diversity_keep",
    "max_min_diversity_order",
    "relevance_scores",
]


def _work_dtype(x: Tensor) -> Tensor:
    """``x`` in at least float32 (half-precision Gram matrices lose the small differences these methods rank)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) or not x.is_floating_point() else x


def cosine_similarity_matrix(x: Tensor) -> Tensor:
    """Pairwise cosine similarity of the tokens of every row.

    The diagonal is exactly 1 (0 for a zero vector), so equal self-similarities never differ by rounding.

    Args:
        x: Tokens, shape (B, N, C). Zero vectors have similarity 0 to everything (themselves included).

    Returns:
        Similarities, shape (B, N, N), in at least float32.
    """
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, N, C), got {tuple(x.shape)}")
    xn = F.normalize(_work_dtype(x), dim=-1)  # (B, N, C)
    sim = xn @ xn.transpose(1, 2)  # (B, N, N)
    sim.diagonal(dim1=1, dim2=2).copy_((xn != 0).any(dim=-1).to(sim.dtype))  # (B, N) exact self-similarity
    return sim


def _candidates(protected: Tensor | None, batch: int, n: int, k: int, device: torch.device) -> tuple[Tensor, int, int]:
    """Candidate mask (B, N), protected count P and the clipped number of picks."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    p = protected_count(protected, batch, n)
    cand = torch.ones(batch, n, dtype=torch.bool, device=device) if protected is None else ~protected  # (B, N)
    return cand, p, min(k, n - p)


def _keep_from_order(order: Tensor, protected: Tensor | None, n: int) -> Tensor:
    """Protected tokens plus the picked ones, ascending, shape (B, P + k)."""
    batch, k = order.shape
    count = k + protected_count(protected, batch, n)
    keep = torch.zeros(batch, n, dtype=torch.bool, device=order.device) if protected is None else protected.clone()
    keep.scatter_(1, order, True)  # (B, N)
    return keep.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :count]  # (B, P + k)


@torch.no_grad()
def max_min_diversity_order(x: Tensor, k: int, *, protected: Tensor | None = None) -> Tensor:
    """Greedy max-min diversity on cosine distance (DivPrune, arXiv:2503.02175), in pick order.

    With distance ``d(i, j) = 1 - cos(x_i, x_j)``, the first pick is the candidate whose nearest other candidate is
    farthest away; every further pick is the candidate whose minimum distance to the picked set is largest. Picked
    tokens are never picked again (indices are unique even when tokens repeat); ties go to the lower index.

    Args:
        x: Tokens, shape (B, N, C).
        k: Tokens to pick; clipped to the N - P candidates.
        protected: Tokens that are never candidates (and are not picked), shape (B, N) bool, same count per row.

    Returns:
        Picked indices in pick order, shape (B, min(k, N - P)).
    """
    batch, n, _ = x.shape
    cand, _, k = _candidates(protected, batch, n, k, x.device)
    dist = 1.0 - cosine_similarity_matrix(x)  # (B, N, N)
    order = torch.zeros(batch, k, dtype=torch.long, device=x.device)
    if k == 0:
        return order
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=x.device)
    others = cand[:, None, :] & ~torch.eye(n, dtype=torch.bool, device=x.device)[None]  # (B, N, N)
    nearest = torch.where(others, dist, inf).amin(dim=-1)  # (B, N); a lone candidate has +inf
    open_ = cand.clone()  # (B, N): candidates not picked yet
    score = nearest
    rows = torch.arange(batch, device=x.device)
    min_dist = torch.full((batch, n), float("inf"), dtype=dist.dtype, device=x.device)  # (B, N)
    for t in range(k):
        j = torch.where(open_, score, -inf).argmax(dim=-1)  # (B,) first maximum: the lower index on ties
        order[:, t] = j
        open_[rows, j] = False
        min_dist = torch.minimum(min_dist, dist[rows, j])  # (B, N) distance to the picked set
        score = min_dist
    return order


def max_min_diversity_keep(x: Tensor, k: int, *, protected: Tensor | None = None) -> Tensor:
    """DivPrune's selection: protected tokens plus ``k`` max-min-diverse tokens (`max_min_diversity_order`).

    Args:
        x: Tokens, shape (B, N, C).
        k: Unprotected tokens to keep; clipped to the N - P unprotected tokens.
        protected: Always-kept tokens, shape (B, N) bool, with the same count P in every row.

    Returns:
        Kept indices, shape (B, P + min(k, N - P)), ascending in each row.
    """
    return _keep_from_order(max_min_diversity_order(x, k, protected=protected), protected, x.shape[1])


@torch.no_grad()
def dpp_greedy_order(kernel: Tensor, k: int, *, protected: Tensor | None = None) -> Tensor:
    """Greedy MAP inference of a determinantal point process, in pick order.

    Each step picks the candidate that most increases ``log det`` of the kernel restricted to the picked set, with the
    incremental Cholesky update of Chen et al. (NeurIPS 2018, "Fast Greedy MAP Inference for Determinantal Point
    Process"): the residual ``d_i^2`` of every candidate starts at ``L_ii`` and drops by ``e_i^2`` after each pick
    ``j``, where ``e_i = (L_ji - <c_j, c_i>) / d_j``. Ties go to the lower index. When no candidate adds volume any
    more (the kernel's rank is exhausted: the best residual is below ``N * eps * max L_ii``), the remaining picks go to
    the candidates with the largest ``L_ii``, lower index first, so exactly ``k`` tokens are always returned.

    Args:
        kernel: Symmetric positive semi-definite kernels, shape (B, N, N).
        k: Tokens to pick; clipped to the N - P candidates.
        protected: Tokens that are never candidates, shape (B, N) bool, same count per row.

    Returns:
        Picked indices in pick order, shape (B, min(k, N - P)).
    """
    if kernel.dim() != 3 or kernel.shape[1] != kernel.shape[2]:
        raise ValueError(f"kernel must have shape (B, N, N), got {tuple(kernel.shape)}")
    batch, n, _ = kernel.shape
    cand, _, k = _candidates(protected, batch, n, k, kernel.device)
    lk = _work_dtype(kernel)
    order = torch.zeros(batch, k, dtype=torch.long, device=kernel.device)
    if k == 0:
        return order
    quality = lk.diagonal(dim1=1, dim2=2).clone()  # (B, N) L_ii
    neg = torch.tensor(float("-inf"), dtype=lk.dtype, device=kernel.device)
    tol = n * torch.finfo(lk.dtype).eps * torch.where(cand, quality, 0).amax(dim=-1).clamp_min(0)  # (B,)
    resid = quality.clone()  # (B, N) d_i^2
    chol = torch.zeros(batch, k, n, dtype=lk.dtype, device=kernel.device)  # (B, k, N) rows c_t
    open_ = cand.clone()
    exhausted = torch.zeros(batch, dtype=torch.bool, device=kernel.device)  # (B,)
    rows = torch.arange(batch, device=kernel.device)
    for t in range(k):
        best = torch.where(open_, resid, neg)  # (B, N)
        j_dpp = best.argmax(dim=-1)  # (B,)
        exhausted |= best[rows, j_dpp] <= tol
        j = torch.where(exhausted, torch.where(open_, quality, neg).argmax(dim=-1), j_dpp)  # (B,)
        order[:, t] = j
        open_[rows, j] = False
        if t == k - 1:
            break
        d_j = resid[rows, j].clamp_min(torch.finfo(lk.dtype).tiny).sqrt()  # (B,)
        c_j = chol[rows, :t, j]  # (B, t)
        e = (lk[rows, j] - torch.einsum("bt,btn->bn", c_j, chol[:, :t])) / d_j[:, None]  # (B, N)
        e = torch.where(exhausted[:, None], 0, e)  # rows past their rank stop updating
        chol[:, t] = e
        resid = resid - e * e
    return order


def dpp_greedy_keep(kernel: Tensor, k: int, *, protected: Tensor | None = None) -> Tensor:
    """Protected tokens plus ``k`` tokens picked by greedy DPP MAP inference (`dpp_greedy_order`).

    Args:
        kernel: Symmetric positive semi-definite kernels, shape (B, N, N).
        k: Unprotected tokens to keep; clipped to the N - P unprotected tokens.
        protected: Always-kept tokens, shape (B, N) bool, with the same count P in every row.

    Returns:
        Kept indices, shape (B, P + min(k, N - P)), ascending in each row.
    """
    return _keep_from_order(dpp_greedy_order(kernel, k, protected=protected), protected, kernel.shape[1])


def relevance_scores(x: Tensor, query: Tensor, *, protected: Tensor | None = None) -> Tensor:
    """Min-max-normalised cosine similarity of every token to one query vector per row (CDPruner's relevance).

    Args:
        x: Tokens, shape (B, N, C).
        query: One query vector per row (e.g. the mean text embedding), shape (B, C).
        protected: Tokens left out of the minimum and maximum, shape (B, N) bool; their scores are still computed.

    Returns:
        Relevance in [0, 1] for the unprotected tokens, shape (B, N), in at least float32. A row whose similarities
        are all equal (a zero query, a single token) gets relevance 1 everywhere.
    """
    if x.dim() != 3 or query.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"expected x (B, N, C) and query (B, C), got {tuple(x.shape)} and {tuple(query.shape)}")
    xn = F.normalize(_work_dtype(x), dim=-1)  # (B, N, C)
    qn = F.normalize(_work_dtype(query).to(xn.dtype), dim=-1)  # (B, C)
    cos = (xn @ qn[:, :, None])[..., 0]  # (B, N)
    cand = torch.ones_like(cos, dtype=torch.bool) if protected is None else ~protected
    inf = torch.tensor(float("inf"), dtype=cos.dtype, device=cos.device)
    lo = torch.where(cand, cos, inf).amin(dim=-1, keepdim=True)  # (B, 1)
    hi = torch.where(cand, cos, -inf).amax(dim=-1, keepdim=True)  # (B, 1)
    span = hi - lo
    flat = ~(span > 0)  # (B, 1); also rows without candidates (inf - inf)
    return torch.where(flat, torch.ones_like(cos), (cos - lo) / torch.where(flat, 1, span))  # (B, N)


def cdpruner_kernel(x: Tensor, relevance: Tensor | None, relevance_weight: float) -> Tensor:
    """CDPruner's conditional DPP kernel ``(1 - w) * S + w * (r_i * S_ij * r_j)``.

    ``S`` is the cosine similarity of the tokens and ``r`` their relevance; ``w = 1`` is the paper's kernel
    ``diag(r) S diag(r)``, ``w = 0`` pure diversity.

    Args:
        x: Tokens, shape (B, N, C).
        relevance: Relevance of every token, shape (B, N), or ``None`` for uniform relevance (the kernel is ``S``).
        relevance_weight: ``w`` in [0, 1].

    Returns:
        The kernel, shape (B, N, N), in at least float32.
    """
    if not 0.0 <= relevance_weight <= 1.0:
        raise ValueError(f"relevance_weight must be in [0, 1], got {relevance_weight}")
    sim = cosine_similarity_matrix(x)  # (B, N, N)
    if relevance is None:
        return sim
    r = relevance.to(sim.dtype)  # (B, N)
    return (1.0 - relevance_weight) * sim + relevance_weight * (r[:, :, None] * sim * r[:, None, :])  # (B, N, N)


def dart_quota(n: int, keep_ratio: float, pivots: int) -> int:
    """Tokens each DART pivot adds: ``floor(keep_ratio * n / pivots)`` in exact arithmetic."""
    from fractions import Fraction

    from tokred.ops.counts import exact_ratio

    if pivots < 1:
        raise ValueError(f"need at least one pivot, got {pivots}")
    return int(exact_ratio(keep_ratio) * n // Fraction(pivots))


@torch.no_grad()
def dart_keep(
    features: Tensor,
    pivots: list[int],
    candidates: Tensor,
    keep_pivots: list[int],
    quota: int,
) -> Tensor:
    """DART's duplication-aware selection for one sequence (arXiv:2502.11494).

    Visits the ``pivots`` in the given order; each takes the ``quota`` remaining candidates least cosine-similar to
    it (on ``features``), which then leave the candidate pool. The kept set is ``keep_pivots`` plus every pick.

    Args:
        features: Token features of one sequence, shape (N, C) (DART: the final-normed hidden states).
        pivots: Sequence indices of the pivots, in visiting order.
        candidates: Sequence indices a pivot may pick, shape (M,) (the image tokens that are not pivots).
        keep_pivots: Pivots that are kept themselves (DART: the image pivots, not the text ones).
        quota: Picks per pivot; a pivot takes fewer when the pool runs out.

    Returns:
        Kept sequence indices, ascending, shape (K,).
    """
    unit = F.normalize(_work_dtype(features), dim=-1)  # (N, C)
    pool = candidates.clone()  # (M,)
    kept = [torch.as_tensor(keep_pivots, dtype=torch.long, device=features.device)]
    for p in pivots:
        take = min(quota, int(pool.numel()))
        if take == 0:
            break
        sim = unit[pool] @ unit[p]  # (M',)
        pick = torch.topk(-sim, take).indices  # least similar first
        kept.append(pool[pick])
        left = torch.ones_like(pool, dtype=torch.bool)
        left[pick] = False
        pool = pool[left]
    return torch.cat(kept).unique(sorted=True)  # (K,)


# CPython's set of ints (Objects/setobject.c): open addressing over a power-of-two table, ``LINEAR_PROBES``
# neighbours per probe, then a perturbed jump; an int hashes to itself. DART's reference visits its pivots in the
# order ``list(set(image + text).copy())`` iterates them, i.e. table-slot order.
_LINEAR_PROBES = 9
_PERTURB_SHIFT = 5
_SET_MINSIZE = 8


def _slot(table: list[int | None], key: int) -> int:
    """The free slot CPython's set probing finds for a new ``key`` (>= 0) in ``table``."""
    mask = len(table) - 1
    i, perturb = key & mask, key
    while True:
        span = _LINEAR_PROBES + 1 if i + _LINEAR_PROBES <= mask else 1
        for j in range(i, i + span):
            if table[j] is None:
                return j
        perturb >>= _PERTURB_SHIFT
        i = (i * 5 + 1 + perturb) & mask


def _resized(keys: list[int], minused: int) -> list[int | None]:
    """A fresh table for more than ``minused`` entries with ``keys`` re-inserted in the given order."""
    size = _SET_MINSIZE
    while size <= minused:
        size <<= 1
    table: list[int | None] = [None] * size
    for key in keys:
        table[_slot(table, key)] = key
    return table


def _build(keys: list[int]) -> list[int | None]:
    """The table of ``set(keys)``: one insertion per new key, resizing to 4x the used count when 3/5 full."""
    table: list[int | None] = [None] * _SET_MINSIZE
    used = 0
    for key in keys:
        if key in table:
            continue
        table[_slot(table, key)] = key
        used += 1
        if used * 5 >= (len(table) - 1) * 3:
            table = _resized([k for k in table if k is not None], used * 4)
    return table


def dart_visit_order(pivots: list[int]) -> list[int]:
    """The order in which DART's reference code visits its pivots: ``list(set(pivots).copy())`` in CPython.

    The reference builds ``set(image_pivots + text_pivots)`` of sequence indices, copies it, and iterates the copy;
    CPython iterates a set of non-negative ints in hash-table slot order, which depends on the values and on the
    table size, not on the insertion order alone. This computes that order explicitly (no ``set`` is iterated), so it
    does not depend on the interpreter; ``tests/unit/test_dart.py`` checks it against CPython itself.

    Args:
        pivots: Sequence indices (>= 0) of the image pivots then the text pivots, as the reference lists them.

    Returns:
        The distinct pivots in visiting order.

    Example:
        >>> from tokred.ops.diversity import dart_visit_order
        >>> dart_visit_order([40, 7, 300, 12])  # slot order of an 8-slot table: 0, 4, 5, 7
        [40, 300, 12, 7]
        >>> dart_visit_order([3, 1, 2])
        [1, 2, 3]
    """
    if any(p < 0 for p in pivots):
        raise ValueError(f"pivot indices must be >= 0, got {pivots}")
    table = _build(list(pivots))
    keys = [k for k in table if k is not None]
    copy: list[int | None] = [None] * _SET_MINSIZE  # set.copy(): set_merge into an empty set
    if len(keys) * 5 >= (_SET_MINSIZE - 1) * 3:
        copy = _resized([], len(keys) * 2)
    if len(copy) == len(table):
        return keys  # same size, no dummies: the slots are copied as they are
    return [k for k in _resized_into(copy, keys) if k is not None]


def _resized_into(table: list[int | None], keys: list[int]) -> list[int | None]:
    """``keys`` inserted into the empty ``table`` in the given order (``set_insert_clean``)."""
    for key in keys:
        table[_slot(table, key)] = key
    return table


def _top_rows(score: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` highest scores, highest first, ties to the lower index; shape (count,)."""
    return torch.sort(score, descending=True, stable=True).indices[:count]


def dart_embedding_keep(image: Tensor, text: Tensor, target: int, pivot_image: int, pivot_text: int) -> Tensor:
    """TensorRT-Edge-LLM's DART on LLM input embeddings, for one image (no decoder layer is run).

    Pivots: the ``min(pivot_image, target)`` image tokens and the ``pivot_text`` prompt text tokens with the largest
    L1 norm (ties to the lower index); the image pivots are kept. The pivots are visited in that order (image pivots,
    then text pivots, each by descending norm); pivot ``j`` of ``P`` takes ``ceil(remaining / (P - j))`` of the
    remaining image tokens least cosine-similar to it (``remaining`` = ``target`` minus the tokens kept so far, ties to
    the lower index), so exactly ``target`` tokens are kept whenever enough remain.

    Args:
        image: The image's input embeddings, shape (n, C).
        text: The prompt's text-token input embeddings, shape (T, C).
        target: Tokens to keep, in ``[1, n]``.
        pivot_image: Image pivots.
        pivot_text: Text pivots.

    Returns:
        Kept image-token indices, ascending, shape (target,).
    """
    img, txt = _work_dtype(image), _work_dtype(text)  # (n, C), (T, C)
    img_piv = _top_rows(img.abs().sum(-1), min(pivot_image, target))  # (P_i,)
    txt_piv = _top_rows(txt.abs().sum(-1), min(pivot_text, txt.shape[0]))  # (P_t,)
    pivots = F.normalize(torch.cat([img[img_piv], txt[txt_piv]]), dim=-1)  # (P, C)
    unit = F.normalize(img, dim=-1)  # (n, C)
    kept = torch.zeros(img.shape[0], dtype=torch.bool, device=img.device)
    kept[img_piv] = True
    for j in range(pivots.shape[0]):
        remaining = target - int(kept.sum())
        pool = torch.nonzero(~kept)[:, 0]  # (M,) ascending
        if remaining <= 0 or pool.numel() == 0:
            break
        per = -(-remaining // (pivots.shape[0] - j))  # ceil
        kept[pool[_top_rows(-(unit[pool] @ pivots[j]), per)]] = True  # least similar first
    return torch.nonzero(kept)[:, 0]  # (K,)
