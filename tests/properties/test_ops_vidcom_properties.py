"""Properties of VidCom2's selection (tokred.ops.vidcom) on arbitrary clips, ties and zero tokens included."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tokred.ops.vidcom import vidcom2_frame_budgets, vidcom2_keep, vidcom2_keep_count, vidcom2_token_scores
from tokred.testing.strategies import token_batches

pytestmark = pytest.mark.properties


@st.composite
def clips(draw):
    t, n = draw(st.integers(1, 6)), draw(st.integers(1, 8))
    b, c = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    x = draw(token_batches(shape=(b, t * n, c), min_value=-3.0, max_value=3.0))
    ratio = draw(st.sampled_from([0.01, 0.1, 0.25, 0.3, 0.5, 0.75, 0.99, 1.0]))
    temperature = draw(st.sampled_from([1e-3, 0.01, 0.1, 1.0, 100.0]))
    return x, t, n, ratio, temperature


@given(case=clips())
def test_budgets_are_exact_bounded_and_the_selection_stays_in_them(case):
    x, t, n, ratio, temperature = case
    budgets = vidcom2_frame_budgets(x, t, ratio, temperature)  # (B, T)
    k = vidcom2_keep_count(t * n, ratio)
    assert bool((budgets.sum(1) == k).all()) and bool((budgets >= 0).all()) and bool((budgets <= n).all())
    keep = vidcom2_keep(x, t, ratio, temperature)
    assert keep.shape == (x.shape[0], k) and bool((keep[:, 1:] > keep[:, :-1]).all())
    per_frame = torch.zeros_like(budgets).scatter_add_(1, keep // n, torch.ones_like(keep))
    assert torch.equal(per_frame, budgets), "every frame keeps exactly its budget, never a token of another"


@given(case=clips())
def test_each_frame_keeps_its_least_similar_tokens_earlier_on_ties(case):
    x, t, n, ratio, temperature = case
    sim = vidcom2_token_scores(x, t)  # (B, T * n)
    keep = vidcom2_keep(x, t, ratio, temperature)
    kept = torch.zeros_like(sim, dtype=torch.bool).scatter(1, keep, True)
    for b in range(x.shape[0]):
        for f in range(t):
            s, m = sim[b, f * n : (f + 1) * n], kept[b, f * n : (f + 1) * n]
            for i in m.nonzero()[:, 0].tolist():
                for j in (~m).nonzero()[:, 0].tolist():
                    assert s[i] < s[j] or (s[i] == s[j] and i < j)
