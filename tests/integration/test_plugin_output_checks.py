"""Plugin outputs are checked at run time: a broken scorer or merger is one clear error naming it, never a silent
wrong answer (NaN scores, (B, V) instead of (B, N), a count that differs from ``output_count``, wrong shapes)."""

from __future__ import annotations

import pytest
import torch
from tokred.schedules.one_shot import OneShotScheduler
from tokred.strategies.pooling import PoolingMerger
from tokred.strategies.random import RandomScorer

import tokred
from tokred._components import MergeResult
from tokred.errors import ConfigError, PluginOutputError, TokredError, UnsupportedModelError
from tokred.testing.models import tiny_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llava():
    return tiny_model("llava")


class _Scorer(RandomScorer):
    name = "broken-scorer"
    bad = "nan"

    def score(self, ctx):
        b, n = ctx.visual_mask.shape
        good = torch.rand(b, n)
        if self.bad == "nan":
            return good.masked_fill(ctx.visual_mask, float("nan"))
        if self.bad == "visual-only":
            return good[:, : int(ctx.visual_mask.sum(-1).max())]
        if self.bad == "transposed":
            return good.T
        if self.bad == "int":
            return (good * 100).long()
        if self.bad == "list":
            return good.tolist()
        return good


class _Merger(PoolingMerger):
    name = "broken-merger"
    bad = "count"

    def merge(self, x, ctx):
        res = super().merge(x, ctx)
        if self.bad == "count":  # one token fewer than output_count says
            keep = res.x.shape[1] - 1
            source = torch.where(res.source >= keep, -1, res.source)
            return MergeResult(res.x[:, :keep], source, None, None)
        if self.bad == "channels":
            return MergeResult(res.x[..., :-1], res.source, res.size, res.grid)
        if self.bad == "dtype":
            return MergeResult(res.x.double(), res.source, res.size, res.grid)
        if self.bad == "source":
            return MergeResult(res.x, res.source.float(), res.size, res.grid)
        if self.bad == "nan":
            return MergeResult(torch.full_like(res.x, float("nan")), res.source, res.size, res.grid)
        if self.bad == "range":
            return MergeResult(res.x, res.source + res.x.shape[1], res.size, res.grid)
        return res


def _run(model, make, strategy):
    with tokred.patch(model, strategy), torch.no_grad():
        model(**make(batch=2))


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("nan", "NaN scores"),
        ("visual-only", r"expected \(batch, sequence\)"),
        ("transposed", "transposed"),
        ("int", "floating dtype"),
        ("list", "expected a float tensor"),
    ],
)
def test_broken_scorer_is_one_clear_error(llava, bad, expected):
    model, make = llava
    scorer = _Scorer()
    scorer.bad = bad
    strategy = tokred.compose(scorer=scorer, scheduler=OneShotScheduler(layer=2, keep_ratio=0.5))
    with pytest.raises(PluginOutputError, match=expected) as info:
        _run(model, make, strategy)
    message = str(info.value)
    assert "scorer 'broken-scorer'" in message and "plugin" in message and "\n" not in message
    if bad == "visual-only":
        assert "one score per visual token only" in message


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("count", "output_count"),
        ("channels", "expected \\(1, M, "),
        ("dtype", "input's dtype"),
        ("source", "integer tensor"),
        ("nan", "NaN features"),
        ("range", "outside"),
    ],
)
def test_broken_merger_is_one_clear_error(llava, bad, expected):
    model, make = llava
    merger = _Merger()
    merger.bad = bad
    with pytest.raises(PluginOutputError, match=expected) as info:
        _run(model, make, tokred.compose(merger=merger))
    assert "merger 'broken-merger'" in str(info.value)


def test_healthy_plugins_pass_the_checks(llava):
    model, make = llava
    scorer, merger = _Scorer(), _Merger()
    scorer.bad = merger.bad = "none"
    _run(model, make, tokred.compose(scorer=scorer, scheduler=OneShotScheduler(layer=2, keep_ratio=0.5)))
    _run(model, make, tokred.compose(merger=merger))


def test_schedule_beyond_the_depth_is_refused(llava):
    model, _ = llava  # 4 decoder layers
    with pytest.raises(ConfigError, match="reduces nothing on this model.*4 decoder layers"):
        tokred.patch(model, "aim-prune", l1=40, l2=50)
    assert "_tokred_handle" not in model.__dict__


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (None, "got None"),
        ("llava-hf/llava-1.5-7b-hf", "load the model first"),
        (torch.nn.Linear(2, 2), "got Linear"),
    ],
)
def test_patch_refuses_what_is_not_a_model(model, expected):
    with pytest.raises(UnsupportedModelError, match=expected):
        tokred.patch(model, "fastv")


def test_removed_handle_cannot_be_reused(llava):
    model, make = llava
    handle = tokred.patch(model, "fastv")
    handle.remove()
    with pytest.raises(TokredError, match="was removed"):
        with handle:
            model(**make())
    with pytest.raises(TokredError, match="already removed"):
        handle.remove()


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: tokred.create_strategy(None), "needs a strategy name"),
        (lambda: tokred.create_strategy(3), "needs a strategy name"),
        (lambda: tokred.create_strategy("fastv", keep_ratio=True), "bool"),
        (lambda: tokred.create_strategy("pooling", kernel=False), "bool"),
        (lambda: tokred.create_strategy("fastv", layer=True), "bool"),
    ],
)
def test_api_bad_values_are_config_errors(call, expected):
    with pytest.raises(TokredError, match=expected):
        call()


def test_bools_still_work_for_bool_options():
    assert tokred.create_strategy("pooling", ceil_mode=False).config.ceil_mode is False
