"""A pruning layer whose budget is 0 keeps no visual token whatever the scores: its scorer is not run."""

from __future__ import annotations

import torch

import tokred
from tokred.testing.models import tiny_model


def test_budget_zero_layer_runs_no_scorer_and_keeps_only_text(monkeypatch):
    model, make = tiny_model("llava")
    inputs = make(batch=2)
    strategy = tokred.create_strategy("aim-prune", l1=1, l2=3)  # 1-indexed layer 2 keeps half, layer 3 none
    assert strategy.scheduler.budgets(4, 64) == [64, 32, 0, 0]
    calls = []
    score = type(strategy.scorer).score
    monkeypatch.setattr(type(strategy.scorer), "score", lambda self, ctx: calls.append(ctx.layer) or score(self, ctx))
    with tokred.patch(model, strategy) as handle, torch.no_grad():
        model(**inputs)
        kept = handle.stats.kept_indices
    assert calls == [0]  # only layer 1's selection is scored (from layer 0), not layer 2's empty one
    text = inputs["input_ids"] != model.config.image_token_id
    assert sorted(kept) == [1, 2]
    for b in range(2):
        assert torch.equal(kept[2][b], text[b].nonzero().flatten())
