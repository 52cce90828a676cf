"""Mixture-of-Depths token routing: which tokens are routable, and which tokens a routed layer processes.

Example:
    >>> import torch
    >>> visual = torch.tensor([[False, True, True, True, False, False]])
    >>> real = torch.ones(1, 6, dtype=torch.bool)
    >>> routable_mask(visual, real)  # instruction text before the last image token, and the image
    tensor([[ True,  True,  True,  True, False, False]])
    >>> route_keep(torch.tensor([[0.0, 0.9, 0.1, 0.8, 0.0, 0.0]]), routable_mask(visual, real), real, torch.tensor([2]))
    tensor([[1, 3, 4, 5]])
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokred.errors import UnsupportedModeError


def routable_mask(visual: Tensor, real: Tensor) -> Tensor:
    """Tokens a router may let skip a layer: the real tokens up to and including the last visual token of each row
    (the image tokens and the instruction text around them); the question after the last image, and padding, are
    never routable (gamma-MoD's masked routing).

    Args:
        visual: Visual tokens, shape (B, N) bool.
        real: Real (non-padding) tokens, shape (B, N) bool.

    Returns:
        Routable tokens, shape (B, N) bool; all ``False`` in a row without visual tokens.
    """
    n = visual.shape[1]
    pos = torch.arange(n, device=visual.device)  # (N,)
    last = torch.where(visual, pos, -1).max(dim=1).values  # (B,) last visual position, -1 if none
    return (pos[None, :] <= last[:, None]) & real.bool()  # (B, N)


def route_keep(scores: Tensor, routable: Tensor, real: Tensor, counts: Tensor) -> Tensor:
    """Original indices a routed layer processes: every real non-routable token, the ``counts[b]`` routable tokens
    of row ``b`` with the highest scores (ties: the earlier token), and, where rows would differ in length, their
    earliest padding tokens (padding is never a key of a real token, so processing it changes no real output).

    Args:
        scores: Priorities, shape (B, N); only routable entries are read.
        routable: Routable tokens, shape (B, N) bool.
        real: Real tokens, shape (B, N) bool.
        counts: Routable tokens each row processes, shape (B,) long.

    Returns:
        Indices, shape (B, K), ascending in each row.

    Raises:
        UnsupportedModeError: If the rows cannot be made equally long with their padding.
    """
    b, n = scores.shape
    s = scores.detach().float().masked_fill(~routable, float("-inf"))  # (B, N)
    order = s.argsort(dim=1, descending=True, stable=True)  # (B, N)
    ranks = torch.arange(n, device=scores.device).expand(b, n)
    rank = torch.empty_like(order).scatter_(1, order, ranks)  # (B, N) rank of each token among the routable
    must = (real.bool() & ~routable) | (routable & (rank < counts.to(rank.device)[:, None]))  # (B, N)
    k = must.sum(dim=1)  # (B,)
    width = int(k.max()) if b else 0
    pad = ~real.bool()
    sel = must | (pad & (pad.long().cumsum(dim=1) <= (width - k)[:, None]))  # (B, N)
    if bool((sel.sum(dim=1) != width).any()):
        raise UnsupportedModeError(
            f"routing keeps {k.tolist()} tokens in the rows of this batch and their padding cannot even them out; "
            "run these samples in separate batches (or group prompts with equal image and instruction lengths)"
        )
    key = torch.where(sel, ranks, ranks + n)  # (B, N): selected first, in order
    return key.sort(dim=1).values[:, :width]  # (B, K) ascending original indices
