"""Bipartite soft matching (ToMe) as a reusable plan, and AIM's per-frame iterative merging.

The matching is computed once from a metric (under ``torch.no_grad()``) and returned as a `MergePlan`, which is then
applied, differentiably, to any number of tensors that share the token axis (hidden states, sizes, position ids,
the metric of the next round). This is ToMe's ``(merge, unmerge)`` closure pair turned into a typed object.

Example:
    >>> import torch
    >>> from tokred.ops import bipartite_soft_matching
    >>> x = torch.randn(2, 16, 8)  # (B, N, C)
    >>> plan = bipartite_soft_matching(x, r=4)
    >>> plan.merge_mean(x).shape  # AIM form: unweighted mean
    torch.Size([2, 12, 8])
    >>> merged, size = plan.merge_weighted(x, None)  # ToMe form: size-weighted mean, sizes summed
    >>> size.sum(dim=1)
    tensor([16., 16.])
    >>> plan.unmerge(merged).shape
    torch.Size([2, 16, 8])

References:
    Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023, arXiv:2210.09461
    (reference implementation: facebookresearch/ToMe, ``tome/merge.py``).
    "AIM: Adaptive Inference of Multi-Modal LLMs via Token Merging and Pruning", ICCV 2025, arXiv:2412.03248
    (reference implementation: LaVi-Lab/AIM, ``llava/model/token_merge.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tokred.ops.provenance import compose_sources, group_sizes, identity_source
from tokred.ops.selection import _expand_index

__all__ = [
    "MergeOrder",
    "MergePlan",
    "aim_merge_frames",
    "aim_round_sizes",
    "bipartite_soft_matching",
    "identity_plan",
    "max_merge_r",
    "proportional_attention_bias",
]

MergeOrder = Literal["score", "original", "split"]


@dataclass(frozen=True, eq=False)
class MergePlan:
    """A computed token-merging plan, applicable to any tensor whose second axis is the token axis.

    Output token ``j`` occupies the slot of input ``keep_idx[:, j]`` (a merge destination or an unmerged token) and
    holds the group of inputs ``{i : source[:, i] == j}``. Groups partition the inputs; nothing is dropped.

    Attributes:
        r: Number of tokens removed (after clipping); 0 means the plan is the identity.
        n_in: Number of input tokens N.
        n_out: Number of output tokens, ``N - r``.
        source: Output index of every input token, shape (B, N), values in ``[0, n_out)``.
        keep_idx: Input index whose slot each output occupies, shape (B, N - r).
        group_size: Number of inputs in each output's group, shape (B, N - r), dtype long.
    """

    r: int
    n_in: int
    n_out: int
    source: Tensor
    keep_idx: Tensor
    group_size: Tensor

    @property
    def is_identity(self) -> bool:
        """True when the plan removes no token (applying it returns its input object unchanged)."""
        return self.r == 0

    def _check_input(self, x: Tensor, name: str = "x") -> None:
        if x.dim() < 2 or x.shape[0] != self.source.shape[0] or x.shape[1] != self.n_in:
            raise ValueError(
                f"{name} must have shape (B={self.source.shape[0]}, N={self.n_in}, ...) to match the plan, "
                f"got {tuple(x.shape)}"
            )

    def _scatter_sum(self, x: Tensor) -> Tensor:
        """Sum every group: (B, N, ...) -> (B, N - r, ...)."""
        out = x.new_zeros(x.shape[0], self.n_out, *x.shape[2:])  # (B, N - r, ...)
        return out.scatter_add(1, _expand_index(self.source, x), x)  # (B, N - r, ...)

    def _per_token(self, t: Tensor, like: Tensor) -> Tensor:
        """View a (B, K) tensor so that it broadcasts against ``like`` of shape (B, K, ...)."""
        return t.view(*t.shape, *([1] * (like.dim() - 2)))

    def select(self, x: Tensor) -> Tensor:
        """Take, for each output, the input at its slot (destination or unmerged token); no averaging.

        Useful for quantities that should not be averaged, such as position ids.

        Args:
            x: Tensor with shape (B, N, ...).

        Returns:
            Tensor with shape (B, N - r, ...).
        """
        self._check_input(x)
        if self.is_identity:
            return x
        return x.gather(1, _expand_index(self.keep_idx, x))  # (B, N - r, ...)

    def merge_mean(self, x: Tensor) -> Tensor:
        """AIM form: each output is the unweighted mean of its group, destination included.

        A destination that receives k sources becomes ``(x_b + sum(x_a)) / (k + 1)``; no sizes are tracked.

        Args:
            x: Floating-point tensor with shape (B, N, ...).

        Returns:
            Merged tensor with shape (B, N - r, ...). Unmerged tokens are copied exactly.
        """
        self._check_input(x)
        if self.is_identity:
            return x
        count = self._per_token(self.group_size.to(x.dtype), x)  # (B, N - r, 1...)
        return self._scatter_sum(x) / count  # (B, N - r, ...)

    def merge_weighted(self, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """ToMe form: size-weighted mean of each group; sizes are summed.

        ``x_b' = (s_b x_b + sum(s_a x_a)) / (s_b + sum(s_a))`` and ``s_b' = s_b + sum(s_a)``, so ``sum(s' x')`` and
        ``sum(s')`` are preserved.

        Args:
            x: Floating-point tensor with shape (B, N, ...).
            size: Token sizes with shape (B, N); ``None`` means all ones (in ``x.dtype``).

        Returns:
            The merged tensor, shape (B, N - r, ...), and the merged sizes, shape (B, N - r). Tokens whose group is
            just themselves are copied exactly (not recomputed as ``s * x / s``).
        """
        self._check_input(x)
        if size is None:
            size = x.new_ones(x.shape[:2])  # (B, N)
        self._check_input(size, "size")
        if self.is_identity:
            return x, size
        weight = self._per_token(size.to(x.dtype), x)  # (B, N, 1...)
        new_size = self._scatter_sum(size)  # (B, N - r)
        merged = self._scatter_sum(x * weight) / self._per_token(new_size.to(x.dtype), x)  # (B, N - r, ...)
        single = self._per_token(self.group_size == 1, x)  # (B, N - r, 1...)
        return torch.where(single, self.select(x), merged), new_size

    def unmerge(self, x_merged: Tensor) -> Tensor:
        """Send each output back to every input slot of its group.

        Args:
            x_merged: Tensor with shape (B, N - r, ...).

        Returns:
            Tensor with shape (B, N, ...); slot ``i`` holds ``x_merged[:, source[:, i]]``.
        """
        if x_merged.dim() < 2 or x_merged.shape[0] != self.source.shape[0] or x_merged.shape[1] != self.n_out:
            raise ValueError(
                f"x_merged must have shape (B={self.source.shape[0]}, N-r={self.n_out}, ...), "
                f"got {tuple(x_merged.shape)}"
            )
        if self.is_identity:
            return x_merged
        return x_merged.gather(1, _expand_index(self.source, x_merged))  # (B, N, ...)


def identity_plan(batch: int, n: int, device: torch.device | str | None = None) -> MergePlan:
    """A plan that merges nothing; applying it returns its input unchanged.

    Args:
        batch: Batch size B.
        n: Number of tokens N.
        device: Device of the index tensors.

    Returns:
        A `MergePlan` with ``r == 0``.
    """
    source = identity_source(batch, n, device=device)  # (B, N)
    ones = torch.ones(batch, n, dtype=torch.long, device=device)  # (B, N)
    return MergePlan(r=0, n_in=n, n_out=n, source=source, keep_idx=source.clone(), group_size=ones)


def max_merge_r(n: int, protected: Tensor | None = None) -> int:
    """Largest ``r`` one bipartite step can remove from ``n`` tokens with the same ``r`` for every row.

    ToMe's bound ``(n - p) // 2`` (p protected tokens), tightened so that every merged source is an unprotected
    even-index token with at least one unprotected odd-index destination: a row whose free tokens all sit on one
    parity cannot merge them.

    Args:
        n: Number of tokens N.
        protected: Protected-token mask, shape (B, N), or None.

    Returns:
        The bound, minimised over the batch.
    """
    if protected is None or protected.shape[0] == 0:
        return n // 2
    free = ~protected  # (B, N)
    free_a = free[:, 0::2].sum(dim=1)  # (B,)
    free_b = free[:, 1::2].sum(dim=1)  # (B,)
    per_row = torch.minimum(free.sum(dim=1) // 2, torch.where(free_b > 0, free_a, torch.zeros_like(free_a)))
    return int(per_row.min())


@torch.no_grad()
def _match(metric: Tensor, r: int, protected: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Cosine bipartite matching; returns A-local (src, unmerged) and B-local destination indices."""
    # cosine similarity in at least float32 so half-precision metrics do not create spurious ties
    metric = F.normalize(metric.to(torch.promote_types(metric.dtype, torch.float32)), dim=-1)  # (B, N, C)
    scores = metric[:, 0::2] @ metric[:, 1::2].transpose(-1, -2)  # (B, Na, Nb)
    if protected is not None:
        scores = scores.masked_fill(protected[:, 0::2, None], -math.inf)  # protected tokens are never sources
        scores = scores.masked_fill(protected[:, None, 1::2], -math.inf)  # ... nor destinations
    best_b = scores.argmax(dim=-1)  # (B, Na); ties -> lowest B index
    best = scores.gather(-1, best_b.unsqueeze(-1)).squeeze(-1)  # (B, Na)
    # stable sort: among equal scores the lower A index is merged first, so plans are deterministic
    edge_order = best.argsort(dim=-1, descending=True, stable=True)  # (B, Na)
    src_a, unm_a = edge_order[:, :r], edge_order[:, r:]  # (B, r), (B, Na - r)
    return src_a, unm_a, best_b.gather(1, src_a)  # last: (B, r)


def _plan_from_matching(n: int, src_a: Tensor, unm_a: Tensor, dst_b: Tensor, order: MergeOrder) -> MergePlan:
    """Build a `MergePlan` from A-local/B-local matching indices (A = even inputs, B = odd inputs)."""
    batch, r = src_a.shape
    b_idx = (2 * torch.arange(n // 2, device=src_a.device) + 1).expand(batch, n // 2)  # (B, Nb)
    if order == "split":
        unm_a = unm_a.sort(dim=1).values  # (B, Na - r) unmerged A tokens by index
    keep_idx = torch.cat([2 * unm_a, b_idx], dim=1)  # (B, N - r)
    if order == "original":
        keep_idx = keep_idx.sort(dim=1).values  # (B, N - r)
    n_out = keep_idx.shape[1]
    out_pos = torch.arange(n_out, device=src_a.device).expand(batch, n_out)  # (B, N - r)
    source = torch.full((batch, n), -1, dtype=torch.long, device=src_a.device).scatter(1, keep_idx, out_pos)
    # a merged source joins whichever output its destination became
    source = source.scatter(1, 2 * src_a, source.gather(1, 2 * dst_b + 1))  # (B, N)
    return MergePlan(r=r, n_in=n, n_out=n_out, source=source, keep_idx=keep_idx, group_size=group_sizes(source, n_out))


def bipartite_soft_matching(
    metric: Tensor,
    r: int,
    *,
    protected: Tensor | None = None,
    order: MergeOrder = "score",
) -> MergePlan:
    """Plan a ToMe/AIM bipartite soft matching step that removes ``r`` tokens per row.

    Tokens alternate between set A (even indices) and set B (odd indices). Each A token picks its most
    cosine-similar B token; the ``r`` A tokens with the highest such similarity are merged into their partners.
    Ties are broken deterministically: the lowest B index as partner, the lowest A index first.

    Args:
        metric: Matching features, shape (B, N, C). Only directions matter (cosine similarity); rows with a norm
            below 1e-12 count as zero vectors (similarity 0 to everything).
        r: Tokens to remove; clipped to `max_merge_r` (at most half of the unprotected tokens). ``r <= 0`` gives
            the identity plan.
        protected: Tokens that are never merged (neither source nor destination), shape (B, N), bool. They pass
            through with their values bitwise unchanged. Requires ``order="original"`` (relative order kept) or
            ``"split"`` (relative order kept within each of A and B; a class token at index 0 stays first).
        order: ``"score"`` (AIM and ToMe default): unmerged A tokens by descending score, then all B tokens in index
            order. ``"split"`` (ToMe's order when a class token is protected): unmerged A tokens by index, then all
            B tokens by index; it decides the next layer's alternating split, so it matters across layers.
            ``"original"``: all surviving tokens in original index order.

    Returns:
        The `MergePlan`; outputs have ``N - r'`` tokens with ``r' = plan.r``. When ``r' == 0`` it is the identity
        plan (original order, inputs returned as they are) whatever ``order`` says.

    Raises:
        ValueError: On a bad shape or order, or ``protected`` with ``order="score"`` (score order interleaves A and B
            tokens and would reorder protected tokens).
    """
    if order not in ("score", "original", "split"):
        raise ValueError(f"order must be 'score', 'split' or 'original', got {order!r}")
    if metric.dim() != 3:
        raise ValueError(f"metric must have shape (B, N, C), got {tuple(metric.shape)}")
    batch, n, _ = metric.shape
    if protected is not None:
        if protected.shape != (batch, n) or protected.dtype != torch.bool:
            raise ValueError(
                f"protected must be a bool tensor of shape {(batch, n)}, got {protected.dtype} {tuple(protected.shape)}"
            )
        if order == "score":
            raise ValueError(
                "protected tokens need order='original' or 'split': 'score' order would move protected tokens "
                "out of their relative order"
            )
    r = min(r, max_merge_r(n, protected))
    if r <= 0:
        return identity_plan(batch, n, device=metric.device)
    src_a, unm_a, dst_b = _match(metric, r, protected)
    return _plan_from_matching(n, src_a, unm_a, dst_b, order)


def proportional_attention_bias(size: Tensor) -> Tensor:
    """ToMe proportional attention: ``log(size)`` added to attention logits, so a token of size s counts s times.

    Args:
        size: Token sizes, shape (B, N), positive.

    Returns:
        Bias broadcastable over heads and queries, shape (B, 1, 1, N). All-ones sizes give exact zeros.
    """
    if not size.is_floating_point():
        size = size.to(torch.get_default_dtype())
    return size.log()[:, None, None, :]  # (B, 1, 1, N)


def aim_round_sizes(t: int, rounds: int | Sequence[int] = 2) -> list[int]:
    """Per-round ``r`` for AIM's iterative merging of ``t`` tokens per frame.

    An int ``k`` means ``k`` rounds with ``r_i = t // 2**i`` for ``i = 1..k`` (from the original ``t``): for
    ``t = 196`` the token counts go 98, 49, 25, 13, 7, 4. A sequence gives the ``r`` of each round explicitly.

    Args:
        t: Tokens per frame T.
        rounds: Number of halving rounds, or explicit per-round ``r`` values.

    Returns:
        The list of ``r`` values (each is clipped again to half the current tokens when applied).
    """
    if isinstance(rounds, int):
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        return [t // 2**i for i in range(1, rounds + 1)]
    sizes = [int(r) for r in rounds]
    if any(r < 0 for r in sizes):
        raise ValueError(f"per-round r values must be >= 0, got {sizes}")
    return sizes


def aim_merge_frames(
    x: Tensor,
    rounds: int | Sequence[int] = 2,
    *,
    metric: Tensor | None = None,
    order: MergeOrder = "score",
) -> tuple[Tensor, Tensor]:
    """AIM's merging before the LLM: iterated bipartite merging with unweighted means, frame by frame.

    Frames are the batch axis, so tokens are never merged across frames. Each round matches on the current merged
    features (or on ``metric``, which is then merged alongside ``x`` with the same unweighted mean).

    Args:
        x: Visual tokens per frame, shape (F, T, C).
        rounds: See `aim_round_sizes`; the default 2 halves twice (196 -> 98 -> 49).
        metric: Optional matching features, shape (F, T, C').
        order: Output order of each round, see `bipartite_soft_matching`.

    Returns:
        Merged tokens, shape (F, T', C), and the composed provenance, shape (F, T), values in ``[0, T')``.
    """
    if x.dim() != 3:
        raise ValueError(f"x must have shape (F, T, C), got {tuple(x.shape)}")
    if metric is not None and metric.shape[:2] != x.shape[:2]:
        raise ValueError(f"metric must have shape (F, T, C') = {tuple(x.shape[:2])} + (C',), got {tuple(metric.shape)}")
    frames, t, _ = x.shape
    source = identity_source(frames, t, device=x.device)  # (F, T)
    for r in aim_round_sizes(t, rounds):
        plan = bipartite_soft_matching(x if metric is None else metric, r, order=order)
        x = plan.merge_mean(x)  # (F, T_i, C)
        if metric is not None:
            metric = plan.merge_mean(metric)  # (F, T_i, C')
        source = compose_sources(source, plan.source)  # (F, T)
    return x, source
