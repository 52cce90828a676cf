"""Unit tests of bipartite soft matching and AIM merging on known cases."""

from __future__ import annotations

import pytest
import torch

from tokred.ops import (
    aim_merge_frames,
    aim_round_sizes,
    bipartite_soft_matching,
    group_sizes,
    max_merge_r,
    proportional_attention_bias,
    provenance_matrix,
)


@pytest.fixture
def frames() -> torch.Tensor:
    return torch.randn(3, 196, 8, generator=torch.Generator().manual_seed(0))  # (F, T, C)


class TestAimWorkedCase:
    def test_two_default_rounds_keep_positions_3_mod_4(self, frames):
        merged, source = aim_merge_frames(frames)
        assert merged.shape == (3, 49, 8)
        destinations = torch.arange(3, 196, 4)  # 3, 7, ..., 195
        # output j of every frame contains the token at original position 4j + 3
        assert torch.equal(source[:, destinations], torch.arange(49).expand(3, 49))
        # groups vary in size (an even token joins its most similar odd token) but partition the frame
        sizes = group_sizes(source, 49)
        assert bool((sizes >= 1).all()) and torch.equal(sizes.sum(1), torch.full((3,), 196))

    def test_each_round_keeps_the_odd_tokens_as_destinations(self, frames):
        first = bipartite_soft_matching(frames, 98)
        assert torch.equal(first.keep_idx, torch.arange(1, 196, 2).expand(3, 98))
        second = bipartite_soft_matching(first.merge_mean(frames), 49)
        assert torch.equal(second.keep_idx, torch.arange(1, 98, 2).expand(3, 49))

    def test_round_two_averages_round_one_means_unweighted(self, frames):
        first = bipartite_soft_matching(frames, 98)
        once = first.merge_mean(frames)
        second = bipartite_soft_matching(once, 49)
        merged, _ = aim_merge_frames(frames)
        torch.testing.assert_close(merged, second.merge_mean(once), rtol=0, atol=0)

    def test_frames_are_independent(self, frames):
        merged, source = aim_merge_frames(frames)
        changed = frames.clone()
        changed[1] = torch.randn(196, 8)
        merged_changed, source_changed = aim_merge_frames(changed)
        for f in (0, 2):
            assert torch.equal(merged[f], merged_changed[f])
            assert torch.equal(source[f], source_changed[f])

    @pytest.mark.parametrize(("rounds", "tokens"), [(0, 196), (1, 98), (2, 49), (3, 25), (4, 13), (5, 7), (6, 4)])
    def test_extra_rounds_token_counts(self, frames, rounds, tokens):
        merged, source = aim_merge_frames(frames, rounds)
        assert merged.shape[1] == tokens
        assert int(source.max()) == tokens - 1

    def test_round_sizes(self):
        assert aim_round_sizes(196, 6) == [98, 49, 24, 12, 6, 3]
        assert aim_round_sizes(576, [288, 36]) == [288, 36]
        with pytest.raises(ValueError, match="rounds"):
            aim_round_sizes(196, -1)

    def test_image_variant_576_to_252_with_a_separate_metric(self):
        x, keys = torch.randn(1, 576, 16), torch.randn(1, 576, 4)
        merged, source = aim_merge_frames(x, [288, 36], metric=keys)
        assert merged.shape == (1, 252, 16)
        assert int(group_sizes(source, 252).sum()) == 576

    def test_metric_is_merged_alongside(self, frames):
        # a power-of-two rescaled copy of x as metric matches exactly like x itself, round after round
        merged, source = aim_merge_frames(frames, 3, metric=frames * 4)
        expected, expected_source = aim_merge_frames(frames, 3)
        assert torch.equal(source, expected_source)
        assert torch.equal(merged, expected)


class TestClipping:
    @pytest.mark.parametrize(("n", "r", "expected"), [(7, 10, 3), (8, 4, 4), (8, 100, 4), (1, 5, 0), (2, 1, 1)])
    def test_r_is_clipped_to_half(self, n, r, expected):
        plan = bipartite_soft_matching(torch.randn(2, n, 4), r)
        assert plan.r == expected
        assert plan.n_out == n - expected

    def test_cls_token_protected(self):
        protected = torch.zeros(2, 6, dtype=torch.bool)
        protected[:, 0] = True
        assert max_merge_r(6, protected) == 2  # ToMe: (6 - 1) // 2
        x = torch.randn(2, 6, 4)
        plan = bipartite_soft_matching(x, 10, protected=protected, order="original")
        assert plan.r == 2
        assert torch.equal(plan.merge_mean(x)[:, 0], x[:, 0])  # the class token stays first, untouched

    def test_free_tokens_on_one_parity_cannot_merge(self):
        protected = torch.tensor([[True, False, True, False]])  # only B tokens are free
        assert max_merge_r(4, protected) == 0
        assert bipartite_soft_matching(torch.randn(1, 4, 2), 1, protected=protected, order="original").is_identity

    def test_batch_uses_the_smallest_row_bound(self):
        protected = torch.tensor([[False] * 6, [True, True, True, False, False, False]])
        assert max_merge_r(6, protected) == 1


class TestErrorsAndApi:
    def test_protected_needs_original_order(self):
        with pytest.raises(ValueError, match="order='original'"):
            bipartite_soft_matching(torch.randn(1, 4, 2), 1, protected=torch.zeros(1, 4, dtype=torch.bool))

    def test_bad_order(self):
        with pytest.raises(ValueError, match="order"):
            bipartite_soft_matching(torch.randn(1, 4, 2), 1, order="index")  # type: ignore[arg-type]

    def test_bad_protected_shape(self):
        with pytest.raises(ValueError, match="protected"):
            bipartite_soft_matching(
                torch.randn(1, 4, 2), 1, protected=torch.zeros(1, 3, dtype=torch.bool), order="original"
            )

    def test_wrong_input_shape_for_plan(self):
        plan = bipartite_soft_matching(torch.randn(1, 4, 2), 1)
        with pytest.raises(ValueError, match="N=4"):
            plan.merge_mean(torch.randn(1, 5, 2))
        with pytest.raises(ValueError, match="N-r=3"):
            plan.unmerge(torch.randn(1, 4, 2))

    def test_known_small_merge(self):
        # A = {0, 2}, B = {1, 3}; token 0 points along token 1, token 2 along token 3
        x = torch.tensor([[[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]]])
        plan = bipartite_soft_matching(x, 2)
        assert torch.equal(plan.source, torch.tensor([[0, 0, 1, 1]]))
        torch.testing.assert_close(plan.merge_mean(x), torch.tensor([[[1.5, 0.05], [0.05, 2.0]]]))
        merged, size = plan.merge_weighted(x, torch.tensor([[3.0, 1.0, 1.0, 1.0]]))
        torch.testing.assert_close(merged[0, 0], torch.tensor([1.25, 0.025]))
        assert torch.equal(size, torch.tensor([[4.0, 2.0]]))

    def test_score_order_puts_best_matches_first(self):
        # token 0 matches token 1 almost exactly, token 2 matches nothing well: only token 0 merges
        x = torch.tensor([[[1.0, 0.0], [1.0, 0.01], [-1.0, 1.0], [0.0, -1.0]]])
        plan = bipartite_soft_matching(x, 1)
        assert torch.equal(plan.keep_idx, torch.tensor([[2, 1, 3]]))
        assert torch.equal(bipartite_soft_matching(x, 1, order="original").keep_idx, torch.tensor([[1, 2, 3]]))

    def test_apply_is_differentiable(self):
        x = torch.randn(2, 10, 4, requires_grad=True)
        plan = bipartite_soft_matching(x, 4)
        plan.merge_mean(x).sum().backward()
        assert x.grad is not None
        # d(sum of means)/dx_i = 1 / size of i's group
        expected = 1.0 / plan.group_size.gather(1, plan.source).float()
        torch.testing.assert_close(x.grad, expected[..., None].expand_as(x))
        y = torch.randn(2, 10, 4, requires_grad=True)
        merged, _ = plan.merge_weighted(y)
        merged.sum().backward()
        assert y.grad is not None and bool(torch.isfinite(y.grad).all())

    def test_trailing_dims_and_integer_select(self):
        x = torch.randn(2, 8, 3, 5)
        plan = bipartite_soft_matching(x.flatten(2), 3)
        assert plan.merge_mean(x).shape == (2, 5, 3, 5)
        positions = torch.arange(8).expand(2, 8)
        assert torch.equal(plan.select(positions), plan.keep_idx)

    def test_half_precision_metric(self):
        x = torch.randn(2, 12, 8).to(torch.bfloat16)
        plan = bipartite_soft_matching(x, 5)
        merged = plan.merge_mean(x)
        assert merged.dtype == torch.bfloat16 and bool(torch.isfinite(merged).all())

    def test_proportional_attention_bias(self):
        bias = proportional_attention_bias(torch.tensor([[1, 2, 4]]))
        assert bias.shape == (1, 1, 1, 3)
        torch.testing.assert_close(bias.flatten(), torch.log(torch.tensor([1.0, 2.0, 4.0])))

    def test_provenance_matrix_of_plan(self):
        plan = bipartite_soft_matching(torch.randn(1, 6, 3), 3)
        m = provenance_matrix(plan.source, plan.n_out)
        assert torch.equal(m.sum(-1), plan.group_size)
