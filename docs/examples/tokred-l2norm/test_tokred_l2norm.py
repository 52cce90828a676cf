"""Tests of the tokred-l2norm plugin: tokred's conformance suite plus what is specific to this scorer."""

import torch
from hypothesis import given, settings
from tokred_l2norm import L2NormScorer, L2NormStrategy

import tokred
from tokred.testing import parametrize_with_checks
from tokred.testing.strategies import token_batches


@parametrize_with_checks([L2NormScorer(), L2NormStrategy(), L2NormStrategy(keep_ratio=0.1, power=1.0)])
def test_conformance(component, check):
    check(component)


def test_registered_through_the_entry_point():
    assert "l2norm" in tokred.list_strategies()
    assert "l2norm" in tokred.list_components("scorers")


@settings(max_examples=20, deadline=None)
@given(x=token_batches(max_tokens=16))
def test_scores_are_the_feature_norms(x):
    visual = torch.ones(x.shape[:2], dtype=torch.bool)
    scores = L2NormScorer().score(tokred.ScoreContext(visual_mask=visual, hidden_states=x))
    torch.testing.assert_close(scores, x.norm(dim=-1))
