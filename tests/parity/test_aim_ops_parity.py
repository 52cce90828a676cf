"""AIM's merge and PageRank against compact re-implementations of the reference formulas (dossier §1.2, §1.3).

The references below follow the dossier's pseudo-code literally (dense matrices, plain loops), written for these
tests; tokred's versions are chunked, batched and vectorised. Inputs: several seeds, odd sizes, batch > 1, ties.
"""

from __future__ import annotations

import pytest
import torch
from tokred.strategies.aim import merge_rounds

from tokred.ops import aim_merge_frames
from tokred.ops.attention import pagerank_importance

pytestmark = pytest.mark.parity


def reference_merge_round(z: torch.Tensor, x: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One AIM round on one frame (T, C): A = even, B = odd, the r best A merged into their best B (unweighted mean
    including the destination), output [unmerged A by descending score, B in index order]. Returns (x', z')."""
    t = x.shape[0]
    r = min(r, t // 2)
    if r <= 0:
        return x, z
    zn = z / z.norm(dim=-1, keepdim=True)
    a_idx, b_idx = list(range(0, t, 2)), list(range(1, t, 2))
    sim = zn[a_idx] @ zn[b_idx].T
    best, partner = [], []
    for row in sim:  # argmax: the first maximum
        j = max(range(len(row)), key=lambda c: (row[c].item(), -c))
        best.append(row[j].item())
        partner.append(j)
    order = sorted(range(len(a_idx)), key=lambda i: (-best[i], i))  # descending score, ties by A index
    merged, kept = order[:r], order[r:]

    def apply(v: torch.Tensor) -> torch.Tensor:
        dest = []
        for j, b in enumerate(b_idx):
            group = [v[b]] + [v[a_idx[i]] for i in merged if partner[i] == j]
            dest.append(torch.stack(group).mean(0))
        return torch.cat([v[[a_idx[i] for i in kept]], torch.stack(dest)]) if kept else torch.stack(dest)

    return apply(x), apply(z)


def reference_aim_merge(x: torch.Tensor, rounds: list[int], metric: torch.Tensor | None = None) -> torch.Tensor:
    """AIM's iterative merge over frames (F, T, C), frame by frame."""
    out = []
    for f in range(x.shape[0]):
        xf, zf = x[f], (x[f] if metric is None else metric[f])
        for r in rounds:
            xf, zf_new = reference_merge_round(zf, xf, r)
            zf = xf if metric is None else zf_new
        out.append(xf)
    return torch.stack(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("t", "keep"), [(196, 0.25), (169, 0.25), (50, 0.25), (33, 0.4375), (27, 0.3)])
def test_aim_merge_equals_the_reference_rounds_and_order(seed, t, keep):
    torch.manual_seed(seed)
    x = torch.randn(3, t, 16, dtype=torch.float64)  # 3 frames
    rounds = merge_rounds(t, keep)
    ours, _ = aim_merge_frames(x, rounds)
    ref = reference_aim_merge(x, rounds)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=5e-7)  # values and order


def test_aim_merge_with_a_separate_metric_and_ties():
    """The image variant's metric (keys) is merged alongside; duplicated rows create exact similarity ties."""
    torch.manual_seed(3)
    metric = torch.randn(2, 64, 8, dtype=torch.float64)
    metric[:, 4] = metric[:, 2]  # A tokens 2 and 4 are identical: equal scores, equal partners
    metric[:, 9] = metric[:, 7]  # B tokens 7 and 9 are identical: an argmax tie
    x = torch.randn(2, 64, 5, dtype=torch.float64)
    rounds = merge_rounds(64, 0.4375)
    ours, _ = aim_merge_frames(x, rounds, metric=metric)
    torch.testing.assert_close(ours, reference_aim_merge(x, rounds, metric), rtol=0, atol=5e-7)


def reference_pagerank(
    q: torch.Tensor, k: torch.Tensor, scaling: float, visible: torch.Tensor, tau: float = 0.1, iters: int = 5
) -> torch.Tensor:
    """Dense reference for one sample: q (H, N, D), k (H, N, D), visible (N,) keys; all N tokens are rows."""
    h, n, _ = q.shape
    mask = torch.ones(n, n, dtype=torch.bool).tril() & visible[None, :]
    logits = (q @ k.transpose(-1, -2)) * scaling
    logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    m = torch.softmax(logits / tau, dim=-1)  # (H, N, N)
    pi = torch.full((h, 1, n), 1.0 / n, dtype=q.dtype)
    for _ in range(iters):
        pi = pi @ m
    return pi[:, 0].square().mean(0).sqrt()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "chunk"), [(37, 16), (130, 128), (77, 1000)])
def test_pagerank_equals_the_dense_reference_with_pruned_rows(seed, n, chunk):
    """Pruned tokens hidden as keys but kept as rows (uniform start over all N), GQA, batch 2."""
    g = torch.Generator().manual_seed(seed)
    b, h, h_kv, d = 2, 4, 2, 8
    q = torch.randn(b, h, n, d, generator=g)
    k = torch.randn(b, h_kv, n, d, generator=g)
    visible = torch.rand(b, n, generator=g) > 0.4
    visible[:, 0] = True  # a text token first: no row is empty
    real = torch.ones(b, n, dtype=torch.bool)
    ours = pagerank_importance(q, k, scaling=d**-0.5, key_mask=visible, query_mask=real, chunk_size=chunk)
    for i in range(b):
        ref = reference_pagerank(q[i].double(), k[i].repeat_interleave(2, 0).double(), d**-0.5, visible[i])
        torch.testing.assert_close(ours[i].double(), ref, rtol=1e-5, atol=1e-7)
        top = ours[i].topk(n // 3).indices.sort().values
        assert torch.equal(top, ref.topk(n // 3).indices.sort().values)


def test_pagerank_survivor_rows_differ_from_the_reference():
    """Drop mode's rule (rows = survivors only) is a different quantity after a pruning; the query mask matters."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 40, 8, generator=g), torch.randn(1, 2, 40, 8, generator=g)
    visible = torch.rand(1, 40, generator=g) > 0.5
    visible[:, 0] = True
    rows_all = pagerank_importance(q, k, scaling=8**-0.5, key_mask=visible, query_mask=torch.ones_like(visible))
    rows_kept = pagerank_importance(q, k, scaling=8**-0.5, key_mask=visible)
    assert not torch.allclose(rows_all, rows_kept)
