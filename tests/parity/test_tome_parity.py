"""ToMe parity: tokred's merger, layer after layer, equals a compact re-implementation of the reference loop.

The reference is written here from the paper (arXiv:2210.09461) and the dossier (algorithms.md §3.1), not from the
reference code: bipartite soft matching on the layer's keys with the class token's row at -inf, the ``r`` best
A tokens merged (size-weighted) into their B partners, and the output ordered ``[unmerged A sorted by index (class
token first), B by index]`` when a class token is protected. That order decides the next layer's alternating split,
so the groups only agree across layers if the order does. Each simulated layer derives its keys from the current
tokens, so a different order at layer i changes everything after it.
"""

from __future__ import annotations

import math

import pytest
import torch

import tokred
from tokred._components import MergeContext
from tokred.ops import compose_sources, identity_source
from tokred.pipeline._vision import merging_blocks, tower_counts

pytestmark = pytest.mark.parity


def reference_tome_layer(
    x: torch.Tensor, size: torch.Tensor, src: torch.Tensor, keys: torch.Tensor, r: int, class_token: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ToMe merge as the reference does it, on (B, T, C) tokens, (B, T) sizes and (B, N0, T) one-hot sources."""
    t = x.shape[1]
    r = min(r, (t - int(class_token)) // 2)
    if r <= 0:
        return x, size, src
    k = keys / keys.norm(dim=-1, keepdim=True)
    scores = k[:, 0::2] @ k[:, 1::2].transpose(1, 2)  # (B, Ta, Tb)
    if class_token:
        scores[:, 0, :] = -math.inf
    best, partner = scores.max(dim=-1)  # (B, Ta)
    order = best.argsort(dim=-1, descending=True, stable=True)
    merged_a, kept_a = order[:, :r], order[:, r:]
    if class_token:
        kept_a = kept_a.sort(dim=-1).values
    dst = partner.gather(1, merged_a)  # (B, r)

    def merge(v: torch.Tensor, reduce: str) -> torch.Tensor:
        a, b = v[:, 0::2], v[:, 1::2]  # (B, Ta, ...), (B, Tb, ...)
        tail = v.shape[2:]
        pick = lambda idx: idx.view(*idx.shape, *([1] * len(tail))).expand(*idx.shape, *tail)  # noqa: E731
        b = b.scatter_reduce(1, pick(dst), a.gather(1, pick(merged_a)), reduce=reduce)
        return torch.cat([a.gather(1, pick(kept_a)), b], dim=1)

    w = size[..., None]
    new_x = merge(x * w, "sum")
    new_size = merge(size[..., None], "sum")[..., 0]
    new_src = merge(src.transpose(1, 2), "amax").transpose(1, 2)
    return new_x / new_size[..., None], new_size, new_src


def _layer(x: torch.Tensor, i: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic stand-in for a tower layer: keys from the current tokens, then a residual update."""
    g = torch.Generator().manual_seed(seed * 100 + i)
    w_k = torch.randn(x.shape[-1], x.shape[-1], generator=g, dtype=torch.float64)
    w_u = torch.randn(x.shape[-1], x.shape[-1], generator=g, dtype=torch.float64) / x.shape[-1] ** 0.5
    return x @ w_k, x + torch.tanh(x @ w_u)


def _run(seed: int, n: int, layers: int, r: int, inflect: float, order: str, batch: int = 2) -> dict[str, list]:
    torch.manual_seed(seed)
    x0 = torch.randn(batch, n, 24, dtype=torch.float64)
    merger = tokred.create_component("merger", "tome", r=r, inflect=inflect, order=order)
    blocks = merging_blocks(layers, -2)
    counts = tower_counts(merger, layers, n)
    sched = tokred.create_component("scheduler", "tome", r=r, inflect=inflect, protected=1)
    cls = torch.zeros(batch, n, dtype=torch.bool)
    cls[:, 0] = True
    out: dict[str, list] = {"ref": [], "tok": []}
    # reference loop: r_i from the schedule over all layers, merged in the layers the features pass through
    x, size, src = x0, torch.ones(batch, n, dtype=torch.float64), torch.eye(n, dtype=torch.float64).expand(batch, n, n)
    for i, r_i in enumerate(sched.reductions(layers)[:blocks]):
        keys, x = _layer(x, i, seed)
        x, size, src = reference_tome_layer(x, size, src, keys, r_i, class_token=True)
        out["ref"].append((src.argmax(-1), x, size))  # (B, N0) output index of every original token
    # tokred: the merger driven as the vision stage drives it
    x, size_t, source = x0, None, identity_source(batch, n)
    for i in range(blocks):
        keys, x = _layer(x, i, seed)
        protected = cls[:, : x.shape[1]]
        res = merger.merge(x, MergeContext(target=counts[i + 1], metric=keys, size=size_t, protected=protected))
        x, size_t, source = res.x, res.size, compose_sources(source, res.source)
        out["tok"].append((source, x, size_t))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "layers", "r", "inflect"), [(197, 12, 8, 0.0), (65, 5, 7, -0.3), (50, 7, 3, 0.55)])
def test_tome_with_class_token_matches_the_reference_groups_at_every_layer(seed, n, layers, r, inflect):
    out = _run(seed, n, layers, r, inflect, "reference")
    assert len(out["ref"]) == len(out["tok"]) == merging_blocks(layers, -2) == layers - 1
    for (ref_src, ref_x, ref_size), (tok_src, tok_x, tok_size) in zip(out["ref"], out["tok"]):
        assert torch.equal(tok_src, ref_src)  # same groups, same output order
        assert torch.equal(tok_size.to(ref_size.dtype), ref_size)
        torch.testing.assert_close(tok_x, ref_x, rtol=1e-12, atol=1e-12)


def test_index_order_diverges_from_the_reference_across_layers():
    """Why the order matters: ``order="original"`` (tokred's previous behaviour) changes the later splits."""
    out = _run(0, 197, 12, 8, 0.0, "original", batch=1)
    ref_groups = {tuple((out["ref"][-1][0][0] == j).nonzero().flatten().tolist()) for j in range(101)}
    tok_groups = {tuple((out["tok"][-1][0][0] == j).nonzero().flatten().tolist()) for j in range(101)}
    assert len(ref_groups & tok_groups) < 101


@pytest.mark.parametrize(("inflect", "expected"), [(-0.3, [10, 9, 9, 8, 8, 8, 7, 7, 7, 6, 6, 6]), (0.5, None)])
def test_fractional_inflect_uses_the_reference_truncation(inflect, expected):
    """``lo = floor(r (1 - inflect))``, ``hi = 2 r - lo``, then a truncated linear ramp (the mean stays near r)."""
    sched = tokred.create_component("scheduler", "tome", r=8, inflect=inflect)
    lo = math.floor(8 * (1 - inflect))
    ramp = [math.floor(lo + (16 - 2 * lo) * i / 11 + 1e-9) for i in range(12)]
    assert sched.reductions(12) == (expected or ramp)
    assert sched.reductions(12)[0] == lo and sched.reductions(12)[-1] == 16 - lo


@pytest.mark.parametrize(("feature_layer", "blocks"), [(-1, 24), (-2, 23), (12, 12), (0, 0)])
def test_merging_blocks_rule(feature_layer, blocks):
    """The layers whose output reaches ``hidden_states[vision_feature_layer]`` merge, with r spread over all 24."""
    assert merging_blocks(24, feature_layer) == blocks
