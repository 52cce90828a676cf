"""Tests of the tokred-l2norm plugin: tokred's conformance suite, then its own."""

import tokred
import torch
from hypothesis import given, settings
from tokred.testing import parametrize_with_checks
from tokred.testing.strategies import token_batches

from tokred_l2norm import L2NormScorer, L2NormStrategy

COMPONENTS = [
    L2NormScorer(),
    L2NormStrategy(),
    L2NormStrategy(keep_ratio=0.1, power=1.0),
]


@parametrize_with_checks(COMPONENTS)
def test_conformance(component, check):
    check(component)


def test_registered_through_the_entry_point():
    assert "l2norm" in tokred.list_strategies()
    assert "l2norm" in tokred.list_components("scorers")


@settings(max_examples=20, deadline=None)
@given(x=token_batches(max_tokens=16))
def test_scores_are_the_feature_norms(x):
    visual = torch.ones(x.shape[:2], dtype=torch.bool)
    ctx = tokred.ScoreContext(visual_mask=visual, hidden_states=x)
    torch.testing.assert_close(L2NormScorer().score(ctx), x.norm(dim=-1))
