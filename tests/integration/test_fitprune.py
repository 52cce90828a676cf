"""FitPrune: the deletion direction, the calibration's per-layer rule against an independent re-implementation from
eager attention weights, the recipe file, the FLOPs budget of a fitted recipe, and the cached-recipe path."""

from __future__ import annotations

import functools

import pytest
import torch

import tokred
from tokred.calibrate_fitprune import _CalibrationScorer, _visual_counts, fit_recipe
from tokred.calibration import load_recipe, make_recipe, save_recipe
from tokred.errors import ConfigError
from tokred.testing.models import tiny_model


@functools.cache
def _model():
    return tiny_model("llava")


def _eager_attentions(model, inputs):
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(**inputs, output_attentions=True, use_cache=False).attentions
    finally:
        model.set_attn_implementation("sdpa")


def _cross_self(att, visual):
    """FitPrune's statistics from one layer's eager weights (B=1), written the paper's way with explicit blocks."""
    m = att[0].float().max(dim=0).values  # (N, N) head max
    vis = torch.nonzero(visual[0])[:, 0]
    after = torch.arange(int(vis[-1]) + 1, m.shape[0])
    cross = m[after][:, vis].sum(0) / len(after)
    self_ = m[vis][:, vis].sum(0) / len(vis)
    return cross, self_


def _recipe_file(tmp_path, layers, deletions, n_visual):
    recipe = make_recipe("fitprune", "tiny", layers, {"flops": 0.5}, per_layer=deletions, n_visual=n_visual)
    return str(save_recipe(tmp_path / "fitprune.json", recipe))


def test_deletes_the_lowest_cross_times_self_tokens(tmp_path):
    model, make = _model()
    inputs = make(batch=1, seed=4)
    visual = inputs["input_ids"] == model.config.image_token_id
    n_vis = int(visual.sum())
    layers = model.config.text_config.num_hidden_layers
    path = _recipe_file(tmp_path, layers, [0.0, 20.0] + [0.0] * (layers - 2), float(n_vis))
    with torch.no_grad(), tokred.patch(model, "fitprune", recipe=path) as handle:
        model(**inputs)
    kept = handle.stats.kept_indices[1][0]  # original indices layer 1 keeps
    cross, self_ = _cross_self(_eager_attentions(model, inputs)[0], visual)  # layer 0: the layer before
    score = cross * self_
    vis = torch.nonzero(visual[0])[:, 0]
    kept_vis = torch.isin(vis, kept)
    assert int((~kept_vis).sum()) == 20
    assert float(score[~kept_vis].max()) < float(score[kept_vis].min())  # the lowest go, never the highest
    expected = vis[score.argsort(descending=True)[: n_vis - 20]].sort().values
    assert torch.equal(vis[kept_vis], expected)


@pytest.mark.parametrize("alpha", [0.1, 0.3, 0.6])
def test_calibration_rule_matches_an_independent_reimplementation(alpha):
    model, make = _model()
    inputs = make(batch=1, seed=5)
    visual = inputs["input_ids"] == model.config.image_token_id
    full: dict = {}
    _visual_counts(model, inputs, _CalibrationScorer(None, full))
    counts = _visual_counts(model, inputs, _CalibrationScorer(alpha, full))
    cross, self_ = _cross_self(_eager_attentions(model, inputs)[0], visual)

    def allowed(scores):  # the paper's loop: delete in ascending order while the remaining sum stays >= (1-a) full
        total, rest, k = float(scores.sum()), float(scores.sum()), 0
        for s in scores.sort().values.tolist():
            if rest - s < (1 - alpha) * total:
                break
            rest, k = rest - s, k + 1
        return set(scores.argsort()[:k].tolist())

    # at layer 0 nothing was pruned before, so the pruned pass's sums are the full model's
    assert abs(full[0][0] - float(cross.sum())) < 1e-4 and abs(full[0][1] - float(self_.sum())) < 1e-4
    gone = allowed(cross) & allowed(self_)
    assert counts[0] - counts[1] == len(gone)


def test_fitted_recipe_reaches_its_budget_and_round_trips(tmp_path):
    model, make = _model()
    inputs = [make(batch=1, seed=s) for s in range(3)]
    body = fit_recipe(model, inputs, 0.6)
    assert body["per_layer"][0] == 0.0 and any(d > 0 for d in body["per_layer"])
    assert abs(body["achieved"]["flops"] - 0.6) / 0.6 < 0.03
    layers = model.config.text_config.num_hidden_layers
    recipe = make_recipe("fitprune", "tiny", layers, {"flops": 0.6}, **body)
    path = save_recipe(tmp_path / "r.json", recipe)
    assert load_recipe(path, "fitprune", layers)["per_layer"] == body["per_layer"]
    with torch.no_grad(), tokred.patch(model, "fitprune", recipe=str(path)) as handle:
        model(**inputs[0])
    assert handle.stats.visual_tokens_per_layer[-1] < handle.stats.visual_tokens_per_layer[0]


def test_a_looser_budget_deletes_no_more():
    model, make = _model()
    inputs = [make(batch=1, seed=s) for s in range(2)]
    tight, loose = fit_recipe(model, inputs, 0.5), fit_recipe(model, inputs, 0.8)
    assert sum(loose["per_layer"]) <= sum(tight["per_layer"])
    assert loose["achieved"]["flops"] > tight["achieved"]["flops"]


def test_batch_of_two_equals_single_runs(tmp_path):
    model, make = _model()
    layers = model.config.text_config.num_hidden_layers
    path = _recipe_file(tmp_path, layers, [0.0, 16.0, 8.0] + [0.0] * (layers - 3), 64.0)
    inputs = make(batch=2, seed=1)
    with torch.no_grad(), tokred.patch(model, "fitprune", recipe=path):
        both = model(**inputs).logits[:, -1]
        for b in range(2):
            keep = inputs["attention_mask"][b].bool()
            one = {k: inputs[k][b : b + 1][:, keep] for k in ("input_ids", "attention_mask")}
            one["pixel_values"] = inputs["pixel_values"][b : b + 1]
            assert (model(**one).logits[0, -1] - both[b]).abs().max() < 1e-4


def test_recipe_errors_are_one_clear_line(tmp_path):
    model, _ = _model()
    with pytest.raises(ConfigError, match="tokred calibrate fitprune"):
        tokred.patch(model, "fitprune", budget=0.5)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="not a tokred-recipe"):
        tokred.patch(model, "fitprune", recipe=str(bad))
    other = make_recipe("prefixkv", "tiny", 4, {"retention": 0.5}, per_layer=[1.0] * 4)
    with pytest.raises(ConfigError, match="is for 'prefixkv'"):
        tokred.patch(model, "fitprune", recipe=str(save_recipe(tmp_path / "o.json", other)))


def test_schedule_refuses_without_recipe_and_follows_deletions():
    sched = tokred.create_strategy("fitprune").scheduler
    with pytest.raises(ConfigError, match="no recipe"):
        sched.budgets(4, 64)
    from tokred.strategies.fitprune import FitPruneScheduler

    assert FitPruneScheduler(deletions=(0.0, 0.25, 0.1, 0.0)).budgets(4, 64) == [64, 48, 42, 42]
    with pytest.raises(ConfigError, match="layer 0"):
        FitPruneScheduler(deletions=(0.1, 0.0)).budgets(2, 10)


def test_compare_match_flops_calibrates_fitprune(tmp_path, monkeypatch):
    from tokred.compare import CompareSettings, run_compare

    monkeypatch.setenv("TOKRED_CACHE_DIR", str(tmp_path))
    settings = CompareSettings(
        model="tiny",
        strategies=["fitprune"],
        limit=3,
        batch_size=3,
        timing_repeats=1,
        match=("flops", 0.7),
        options={"fitprune": {"samples": 2}},
    )
    rows = {r["strategy"]: r for r in run_compare(settings).rows}
    assert abs(rows["fitprune"]["relative_flops"] - 0.7) / 0.7 <= 0.05, rows["fitprune"]  # measured
    assert list((tmp_path / "recipes" / "fitprune").glob("*/flops-0.7.json"))  # calibrated once, cached
