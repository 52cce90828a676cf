"""Compact re-implementations of published selections, written from the papers' descriptions (never from the
official code), as plainly as possible: float64 numpy, Python loops, log-determinants from scratch, so that they share
no code path with tokred's ops. Unit and integration tests compare tokred's strategies with them."""

from __future__ import annotations

import numpy as np


def ref_divprune(x: np.ndarray, k: int) -> list[int]:
    """DivPrune (arXiv:2503.02175): greedy max-min diversity with distance 1 - cos, in pick order."""
    n = len(x)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = [[1.0 - float(unit[i] @ unit[j]) for j in range(n)] for i in range(n)]
    nearest = [min(dist[i][j] for j in range(n) if j != i) for i in range(n)]
    picked = [max(range(n), key=lambda i: nearest[i])]
    while len(picked) < k:
        rest = [i for i in range(n) if i not in picked]
        picked.append(max(rest, key=lambda i: min(dist[i][s] for s in picked)))
    return picked


def ref_relevance(x: np.ndarray, text: np.ndarray) -> np.ndarray:
    """CDPruner's relevance: cosine to the (mean) text embedding, min-max normalised over the image's tokens."""
    cos = np.array([float(v @ text) / (np.linalg.norm(v) * np.linalg.norm(text)) for v in x])
    return (cos - cos.min()) / (cos.max() - cos.min())


def ref_cdpruner_kernel(x: np.ndarray, text: np.ndarray, w: float) -> np.ndarray:
    """(1 - w) * S + w * (r_i * S_ij * r_j), S the cosine similarity of the tokens."""
    n = len(x)
    r = ref_relevance(x, text)
    norm = np.linalg.norm(x, axis=1)
    s = np.array([[float(x[i] @ x[j]) / (norm[i] * norm[j]) if i != j else 1.0 for j in range(n)] for i in range(n)])
    return np.array([[(1 - w) * s[i, j] + w * r[i] * s[i, j] * r[j] for j in range(n)] for i in range(n)])


def ref_dpp_greedy(kernel: np.ndarray, k: int) -> list[int]:
    """Greedy DPP MAP: each step adds the item that maximises log det of the kernel restricted to the picked set."""
    picked: list[int] = []
    for _ in range(k):
        best, best_logdet = -1, -np.inf
        for j in range(len(kernel)):
            if j in picked:
                continue
            idx = picked + [j]
            sign, logdet = np.linalg.slogdet(kernel[np.ix_(idx, idx)])
            if sign > 0 and logdet > best_logdet:
                best, best_logdet = j, logdet
        picked.append(best)
    return picked


def ref_dart(
    keys: np.ndarray,
    normed: np.ndarray,
    image: range,
    keep_ratio: float,
    pivot_image_token: int = 4,
    pivot_text_token: int = 4,
    visit: str = "set",
) -> list[int]:
    """DART (arXiv:2502.11494) on one unpadded sequence, returning the kept image tokens (sorted).

    ``visit="set"`` visits the pivots in the iteration order of a Python set of their indices (the reference's
    order); ``"rank"`` in the order they were ranked (image pivots, then text pivots), to show that the order matters.

    Args:
        keys: Post-RoPE keys of layer K-1, all heads concatenated, shape (N, H*D).
        normed: Layer K-1's output after the decoder's final norm, shape (N, C).
        image: Positions of the image tokens (one contiguous span).
        keep_ratio: Fraction of image tokens kept.
    """
    from fractions import Fraction

    l1 = np.abs(keys).sum(axis=1)
    after = range(image.stop, len(keys))
    image_pivots = sorted(image, key=lambda i: -l1[i])[:pivot_image_token]
    text_pivots = sorted(after, key=lambda i: -l1[i])[:pivot_text_token]
    pivots = pivot_image_token + pivot_text_token
    quota = int(Fraction(str(keep_ratio)) * len(image) // pivots)
    unit = normed / np.linalg.norm(normed, axis=1, keepdims=True)
    kept = set(image_pivots)
    pool = [i for i in image if i not in image_pivots]
    ranked = image_pivots + text_pivots
    for p in list(set(ranked).copy()) if visit == "set" else ranked:  # the reference iterates a copy of the set
        picks = sorted(pool, key=lambda i: float(unit[p] @ unit[i]))[:quota]  # least similar to the pivot
        kept.update(picks)
        pool = [i for i in pool if i not in picks]
    return sorted(kept)
