"""Selections driven by the vision tower's class-token attention: VTC-CLS, VisionZip and VisPruner.

Pure tensor functions over a batch of images with the same patch count; ties in a ranking go to the lower index.

Example:
    >>> import torch
    >>> cls = torch.tensor([[[0.1, 0.5, 0.2, 0.9]]])  # (B=1, L=1, n=4) head-mean class-token attention
    >>> vtc_cls_scores(cls)
    tensor([[0.1000, 0.5000, 0.2000, 0.9000]])
    >>> feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [1.0, 1.0]]])  # (B=1, n=4, C=2)
    >>> vispruner_keep(cls[:, 0], feats, keep=3, important=1).tolist()  # 3 by attention; 0 is too close to 2
    [[1, 2, 3]]
"""

from __future__ import annotations

import torch
from torch import Tensor


def cls_attention_rows(query: Tensor, key: Tensor, scale: float) -> Tensor:
    """The class token's softmax attention over all tower tokens (bidirectional, no mask), in float32.

    Args:
        query: The class token's query, shape (B, H, 1, D).
        key: Keys of all T tokens, shape (B, H, T, D).
        scale: Softmax scale (usually ``D ** -0.5``).

    Returns:
        Probabilities, shape (B, H, T).
    """
    logits = (query.float() @ key.float().transpose(-1, -2))[:, :, 0] * scale  # (B, H, T)
    return logits.softmax(-1)


def vtc_cls_scores(cls_rows: Tensor) -> Tensor:
    """VTC-CLS's patch score: the class token's head-mean attention summed over tower layers ("ensemble").

    Args:
        cls_rows: Head-mean class-token attention to the patches, shape (B, L, n).

    Returns:
        Scores, shape (B, n), float32.
    """
    return cls_rows.float().sum(1)  # (B, n)


def _descending(scores: Tensor) -> Tensor:
    """Indices of ``scores`` (B, n) from the highest down, ties to the lower index, shape (B, n)."""
    return scores.argsort(dim=1, descending=True, stable=True)


def visionzip_groups(cls_sum: Tensor, metric: Tensor, dominant: int, contextual: int) -> tuple[Tensor, Tensor, Tensor]:
    """VisionZip's split of the patches into dominant tokens and contextual groups.

    Dominant: the ``dominant`` patches with the most class-token attention (summed over heads), in ascending index
    order. Contextual: the other ``M`` patches in ascending order, their keys L2-normalised; targets are the remaining
    tokens at positions ``0, step, 2 step, ...`` (``step = max(1, M // C)``, the first ``C = min(contextual, M)``),
    and every other remaining token joins the target whose normalised key has the largest dot product with its own.

    Args:
        cls_sum: Class-token attention to each patch, summed over heads, shape (B, n).
        metric: Keys of the patches, mean over heads, shape (B, n, D).
        dominant: Dominant patches kept (``<= n``).
        contextual: Contextual groups asked for.

    Returns:
        ``(dom, rest, group)``: dominant patch indices (B, K_d) ascending; remaining patch indices (B, M) ascending;
        for each remaining token its group ``0..C-1`` (a target is group ``j`` of its own), shape (B, M).
    """
    b, n = cls_sum.shape
    order = _descending(cls_sum.float())  # (B, n)
    is_dom = torch.zeros(b, n, dtype=torch.bool, device=cls_sum.device).scatter_(1, order[:, :dominant], True)
    idx = torch.arange(n, device=cls_sum.device).expand(b, n)
    dom = idx[is_dom].view(b, -1)  # (B, K_d) ascending
    rest = idx[~is_dom].view(b, -1)  # (B, M) ascending
    m = rest.shape[1]
    c = min(contextual, m)
    if c == 0:
        return dom, rest, torch.zeros(b, m, dtype=torch.long, device=cls_sum.device)
    keys = metric.float().gather(1, rest[..., None].expand(-1, -1, metric.shape[-1]))  # (B, M, D)
    keys = keys / keys.norm(dim=-1, keepdim=True)
    step = max(1, m // c)
    targets = torch.arange(0, m, step, device=cls_sum.device)[:c]  # (C,) positions in the remaining list
    sim = keys @ keys[:, targets].transpose(1, 2)  # (B, M, C)
    group = sim.argmax(-1)  # (B, M)
    group[:, targets] = torch.arange(c, device=cls_sum.device)  # a target is its own group
    return dom, rest, group


def visionzip_contextual(features: Tensor, group: Tensor, targets: Tensor, c: int, mode: str) -> Tensor:
    """Contextual tokens from the remaining tokens' features and their groups.

    Args:
        features: Features of the remaining tokens, shape (B, M, C_v).
        group: Group of each remaining token, shape (B, M).
        targets: Positions of the targets in the remaining list, shape (C,).
        c: Number of groups C.
        mode: ``"reference"``: target + mean of the other members (the official code; a target without members
            stays as it is); ``"mean"``: the mean of all members, target included.

    Returns:
        Contextual tokens, shape (B, C, C_v).
    """
    b, m, d = features.shape
    if c == 0:
        return features.new_zeros(b, 0, d)
    member = torch.ones(b, m, dtype=features.dtype, device=features.device)  # (B, M)
    if mode == "reference":
        member[:, targets] = 0.0
    total = features.new_zeros(b, c, d).scatter_add_(
        1, group[..., None].expand(-1, -1, d), features * member[..., None]
    )
    count = features.new_zeros(b, c).scatter_add_(1, group, member)  # (B, C)
    mean = total / count.clamp_min(1)[..., None]  # (B, C, C_v)
    return features[:, targets] + mean if mode == "reference" else mean


def vispruner_keep(importance: Tensor, features: Tensor, keep: int, important: int, max_step: int = 8) -> Tensor:
    """VisPruner's selection: important tokens by class-token attention, then diverse ones by iterative removal.

    Important: the ``important`` patches with the highest head-mean class-token attention. Diverse: the others, in
    descending attention order, reduced to ``keep - important`` tokens by rounds of: ``r = min(max_step, R - T_d)``;
    split the list into even slots ``a = list[0::2]`` and odd slots ``b = list[1::2]``; score each ``a`` token by its
    largest cosine similarity to any ``b`` token; drop the ``r`` highest-scoring ``a`` tokens; the new list is the
    kept ``a`` tokens in descending score order followed by the ``b`` tokens.

    Args:
        importance: Head-mean class-token attention of each patch, shape (B, n).
        features: Pre-projector features of the patches, shape (B, n, C_v).
        keep: Tokens kept in all, ``T`` (``<= n``).
        important: Important tokens, ``<= keep``.
        max_step: Largest number of tokens dropped per round (8 in the paper's code).

    Returns:
        Kept patch indices, shape (B, keep), ascending.
    """
    b, n = importance.shape
    order = _descending(importance.float())  # (B, n)
    diverse = keep - important
    rest = order[:, important:]  # (B, R) descending attention
    unit = features.float() / features.float().norm(dim=-1, keepdim=True)  # (B, n, C_v)
    while diverse > 0 and rest.shape[1] > diverse:
        r = min(max_step, rest.shape[1] - diverse)
        a, odd = rest[:, 0::2], rest[:, 1::2]  # (B, |a|), (B, |b|)
        ua = unit.gather(1, a[..., None].expand(-1, -1, unit.shape[-1]))  # (B, |a|, C_v)
        ub = unit.gather(1, odd[..., None].expand(-1, -1, unit.shape[-1]))  # (B, |b|, C_v)
        score = (ua @ ub.transpose(1, 2)).amax(-1)  # (B, |a|)
        kept = a.gather(1, _descending(score)[:, r:])  # (B, |a| - r) in descending score order
        rest = torch.cat([kept, odd], 1)
    chosen = torch.cat([order[:, :important], rest[:, :diverse] if diverse > 0 else rest[:, :0]], 1)  # (B, keep)
    return chosen.sort(dim=1).values
