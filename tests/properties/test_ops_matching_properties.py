"""Properties of bipartite soft matching (ToMe/AIM), its merge forms and AIM per-frame merging."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tokred.ops import (
    aim_merge_frames,
    aim_round_sizes,
    bipartite_soft_matching,
    group_sizes,
    proportional_attention_bias,
    provenance_matrix,
)
from tokred.testing.strategies import budgets, protected_masks, token_batches, token_sizes

pytestmark = pytest.mark.properties

orders = st.sampled_from(["score", "original"])


def group_mean(x: torch.Tensor, source: torch.Tensor, n_out: int) -> torch.Tensor:
    """Oracle: plain mean of each provenance group, via the dense provenance matrix."""
    m = provenance_matrix(source, n_out).to(x.dtype)  # (B, n_out, N)
    return (m @ x) / m.sum(-1, keepdim=True)


def parity_bound(protected: torch.Tensor) -> int:
    """Oracle for r clipping with protected tokens, written with Python loops."""
    bounds = []
    for row in protected.tolist():
        free = [i for i, p in enumerate(row) if not p]
        free_a = sum(1 for i in free if i % 2 == 0)
        free_b = len(free) - free_a
        bounds.append(min(len(free) // 2, free_a if free_b else 0))
    return min(bounds)


@given(x=token_batches(), r=budgets(min_value=-3, max_value=40), order=orders)
def test_output_count(x, r, order):
    b, n, c = x.shape
    plan = bipartite_soft_matching(x, r, order=order)
    expected_r = max(0, min(r, n // 2))
    assert (plan.r, plan.n_in, plan.n_out) == (expected_r, n, n - expected_r)
    assert plan.merge_mean(x).shape == (b, n - expected_r, c)
    merged, size = plan.merge_weighted(x)
    assert merged.shape == (b, n - expected_r, c)
    assert size.shape == (b, n - expected_r)
    assert plan.source.shape == (b, n)
    assert plan.keep_idx.shape == plan.group_size.shape == (b, n - expected_r)


@given(x=token_batches(), r=budgets(max_value=40), order=orders)
def test_provenance_partitions_input(x, r, order):
    b, n, _ = x.shape
    plan = bipartite_soft_matching(x, r, order=order)
    assert int(plan.source.min()) >= 0 and int(plan.source.max()) < plan.n_out
    # every input in exactly one output, every output non-empty
    assert torch.equal(provenance_matrix(plan.source, plan.n_out).sum(1), torch.ones(b, n, dtype=torch.long))
    assert torch.equal(plan.group_size, group_sizes(plan.source, plan.n_out))
    assert bool((plan.group_size >= 1).all())
    assert torch.equal(plan.group_size.sum(1), torch.full((b,), n))
    # each output sits in the slot of a member of its own group
    assert torch.equal(plan.source.gather(1, plan.keep_idx), torch.arange(plan.n_out).expand(b, -1))
    # merged-away inputs are A (even) tokens and join a group anchored at a B (odd) token
    removed = torch.ones(b, n, dtype=torch.bool).scatter(1, plan.keep_idx, False)
    positions = torch.arange(n).expand(b, n)
    assert bool((positions[removed] % 2 == 0).all())
    anchors = plan.keep_idx.gather(1, plan.source)  # (B, N)
    assert bool((anchors[removed] % 2 == 1).all())
    assert int(removed.sum()) == b * plan.r


@given(data=st.data(), r=budgets(max_value=40), order=orders)
def test_weighted_merge_conserves_mass_and_size(data, r, order):
    x = data.draw(token_batches()).double()
    size = data.draw(token_sizes(shape=tuple(x.shape[:2]))).double()
    plan = bipartite_soft_matching(x, r, order=order)
    merged, new_size = plan.merge_weighted(x, size)
    assert torch.equal(new_size.sum(1), size.sum(1))  # integer-valued sizes sum exactly
    torch.testing.assert_close((new_size[..., None] * merged).sum(1), (size[..., None] * x).sum(1))
    # tokens not involved in a merge keep their size
    single = plan.group_size == 1
    assert torch.equal(new_size[single], plan.select(size)[single])


@given(data=st.data(), value=st.floats(-4, 4, width=32), r=budgets(max_value=40), order=orders)
def test_constant_inputs_are_fixed_points(data, value, r, order):
    shape = tuple(data.draw(token_batches()).shape)
    x = torch.full(shape, value)
    size = data.draw(token_sizes(shape=shape[:2]))
    plan = bipartite_soft_matching(x, r, order=order)
    torch.testing.assert_close(plan.merge_mean(x), torch.full((shape[0], plan.n_out, shape[2]), value))
    merged, _ = plan.merge_weighted(x, size)
    torch.testing.assert_close(merged, torch.full((shape[0], plan.n_out, shape[2]), value))


@given(data=st.data(), r=st.integers(-3, 0), order=orders)
def test_zero_reduction_is_bitwise_identity(data, r, order):
    x = data.draw(token_batches())
    size = data.draw(token_sizes(shape=tuple(x.shape[:2])))
    plan = bipartite_soft_matching(x, r, order=order)
    assert plan.is_identity
    assert torch.equal(plan.merge_mean(x), x)
    merged, new_size = plan.merge_weighted(x, size)
    assert torch.equal(merged, x) and torch.equal(new_size, size)
    assert torch.equal(plan.unmerge(x), x)
    assert torch.equal(plan.select(x), x)
    assert torch.equal(plan.source, torch.arange(x.shape[1]).expand(x.shape[0], -1))


@given(x=token_batches(max_tokens=1), r=budgets(max_value=8), order=orders)
def test_single_token_cannot_merge(x, r, order):
    plan = bipartite_soft_matching(x, r, order=order)
    assert plan.is_identity and torch.equal(plan.merge_mean(x), x)


@given(data=st.data(), r=budgets(max_value=40))
def test_protected_tokens_untouched_and_order_kept(data, r):
    x = data.draw(token_batches())
    b, n, _ = x.shape
    protected = data.draw(protected_masks(shape=(b, n)))
    size = data.draw(token_sizes(shape=(b, n)))
    plan = bipartite_soft_matching(x, r, protected=protected, order="original")
    assert plan.r == min(r, parity_bound(protected))
    assert bool((plan.keep_idx[:, 1:] > plan.keep_idx[:, :-1]).all())  # survivors in original order
    merged = plan.merge_mean(x)
    weighted, new_size = plan.merge_weighted(x, size)
    out = plan.source[protected]  # output index of every protected token, row-major
    rows = protected.nonzero()[:, 0]
    assert bool((plan.group_size[rows, out] == 1).all())  # nothing merged into a protected token
    assert torch.equal(merged[rows, out], x[protected])
    assert torch.equal(weighted[rows, out], x[protected])
    assert torch.equal(new_size[rows, out], size[protected])


@given(data=st.data(), r=budgets(max_value=40), order=orders, protect=st.booleans())
def test_batch_independence(data, r, order, protect):
    x = data.draw(token_batches(min_batch=2))
    b, n, _ = x.shape
    protected = data.draw(protected_masks(shape=(b, n))) if protect else None
    order = "original" if protect else order
    plan = bipartite_soft_matching(x, r, protected=protected, order=order)
    merged = plan.merge_mean(x)
    for i in range(b):
        row_protected = None if protected is None else protected[i : i + 1]
        row_plan = bipartite_soft_matching(x[i : i + 1], plan.r, protected=row_protected, order=order)
        assert torch.equal(row_plan.source, plan.source[i : i + 1])
        torch.testing.assert_close(row_plan.merge_mean(x[i : i + 1]), merged[i : i + 1], rtol=0, atol=0)


@given(x=token_batches(), r=budgets(max_value=40), order=orders)
def test_aim_merge_is_unweighted_group_mean(x, r, order):
    x = x.double()
    plan = bipartite_soft_matching(x, r, order=order)
    torch.testing.assert_close(plan.merge_mean(x), group_mean(x, plan.source, plan.n_out))


@given(x=token_batches(), r=budgets(max_value=40), order=orders)
def test_unmerge_broadcasts_each_group_value(x, r, order):
    plan = bipartite_soft_matching(x, r, order=order)
    merged = plan.merge_mean(x)
    restored = plan.unmerge(merged)
    assert restored.shape == x.shape
    assert torch.equal(restored, merged.gather(1, plan.source[..., None].expand_as(x)))
    untouched = plan.group_size.gather(1, plan.source) == 1  # (B, N) inputs that were merged with nothing
    assert torch.equal(restored[untouched], x[untouched])


@given(x=token_batches(), r=budgets(max_value=40))
def test_score_order_layout(x, r):
    b, n, _ = x.shape
    plan = bipartite_soft_matching(x, r, order="score")
    if plan.is_identity:  # an identity plan leaves every token where it is
        assert torch.equal(plan.keep_idx, torch.arange(n).expand(b, -1))
        return
    n_unmerged_a = plan.n_out - n // 2
    head, tail = plan.keep_idx[:, :n_unmerged_a], plan.keep_idx[:, n_unmerged_a:]
    assert torch.equal(tail, (2 * torch.arange(n // 2) + 1).expand(b, -1))  # B tokens in index order
    assert bool((head % 2 == 0).all())


@given(x=token_batches(), r=budgets(max_value=40))
def test_original_order_is_sorted(x, r):
    plan = bipartite_soft_matching(x, r, order="original")
    assert bool((plan.keep_idx[:, 1:] > plan.keep_idx[:, :-1]).all())


@given(data=st.data(), r=budgets(max_value=40), order=orders)
def test_matching_invariant_to_positive_row_scaling(data, r, order):
    x = data.draw(token_batches()).double()
    # rows with a near-zero norm are normalised against an epsilon instead of their norm, so scale matters there
    x[..., 0] += (x.norm(dim=-1) < 1e-6).double()
    # powers of two rescale exactly, so the normalised metric is bitwise the same
    exponents = data.draw(token_batches(shape=tuple(x.shape[:2]), min_value=-3, max_value=3))
    scaled = x * torch.exp2(exponents.round().double())[..., None]
    plan, plan_scaled = bipartite_soft_matching(x, r, order=order), bipartite_soft_matching(scaled, r, order=order)
    assert torch.equal(plan.source, plan_scaled.source)
    assert torch.equal(plan.keep_idx, plan_scaled.keep_idx)


@given(data=st.data())
def test_proportional_attention_bias(data):
    size = data.draw(token_sizes())
    b, n = size.shape
    assert torch.equal(proportional_attention_bias(torch.ones(b, n)), torch.zeros(b, 1, 1, n))
    bias = proportional_attention_bias(size)
    assert bias.shape == (b, 1, 1, n)
    # a key of size s weighs like s identical copies of it
    logits = data.draw(token_batches(shape=(b, n)))
    values = data.draw(token_batches(shape=(b, n, 2)))
    weighted = torch.softmax(logits.double() + bias[:, 0, 0].double(), dim=-1)[:, None] @ values.double()
    for i, row in enumerate(size.long().tolist()):
        copies = torch.tensor([j for j, count in enumerate(row) for _ in range(count)])  # each key s times
        rep_logits, rep_values = logits[i, copies].double(), values[i, copies].double()
        torch.testing.assert_close(weighted[i, 0], torch.softmax(rep_logits, -1) @ rep_values)


@given(x=token_batches(max_tokens=40), rounds=st.integers(0, 4), order=orders)
def test_aim_frames_count_and_provenance(x, rounds, order):
    frames, t, c = x.shape
    merged, source = aim_merge_frames(x, rounds, order=order)
    expected = t
    for r in aim_round_sizes(t, rounds):
        expected -= min(r, expected // 2)
    assert merged.shape == (frames, expected, c)
    assert source.shape == (frames, t)
    assert torch.equal(group_sizes(source, expected).sum(1), torch.full((frames,), t))
    assert bool((group_sizes(source, expected) >= 1).all())


@given(data=st.data(), rounds=st.integers(1, 3))
def test_aim_frames_are_independent(data, rounds):
    x = data.draw(token_batches(min_batch=2, max_tokens=40))
    other = data.draw(token_batches(shape=tuple(x.shape)))
    merged, source = aim_merge_frames(x, rounds)
    changed = x.clone()
    changed[1:] = other[1:]  # modify every frame but the first
    merged_changed, source_changed = aim_merge_frames(changed, rounds)
    assert torch.equal(source[0], source_changed[0])
    torch.testing.assert_close(merged[0], merged_changed[0], rtol=0, atol=0)
