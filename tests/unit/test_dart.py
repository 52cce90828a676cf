"""DART's count, selection op and scorer on synthetic inputs (the tiny-model comparison with a re-implementation of
the paper is in tests/integration/test_strategies_diversity.py)."""

from __future__ import annotations

import torch

import tokred
from tokred import ScoreContext
from tokred.ops.diversity import dart_keep, dart_quota


def test_counts_follow_the_reference_formula():
    assert dart_quota(576, 0.25, 8) == 18
    assert dart_quota(576, 0.29, 8) == 20  # exact: 0.29 * 576 / 8 = 20.88
    strategy = tokred.create_strategy("dart", keep_ratio=0.25)
    assert strategy.scheduler.budgets(32, 576)[:3] == [576, 576, 148]
    assert strategy.scheduler.budgets(4, 10)[-1] == 4 + 8 * 0  # quota 0: the image pivots only
    assert strategy.scheduler.budgets(4, 3)[-1] == 3  # never more than N
    assert tokred.create_strategy("dart", keep_ratio=1.0).scheduler.budgets(4, 64)[-1] == 64


def test_each_pivot_takes_its_least_similar_tokens_in_visiting_order():
    a, b = [1.0, 0.0], [0.6, 0.8]  # two pivots
    feats = torch.tensor([a, b, [-1.0, 0.0], [0.8, -0.6], [-0.6, 0.8]])
    pool = torch.tensor([2, 3, 4])
    # both pivots like token 2 least: whoever is visited first claims it, the other takes its next choice
    assert dart_keep(feats, [0, 1], pool, [0], quota=1).tolist() == [0, 2, 3]
    assert dart_keep(feats, [1, 0], pool, [0], quota=1).tolist() == [0, 2, 4]
    assert dart_keep(feats, [0, 1], pool, [], quota=9).tolist() == [2, 3, 4]  # the pool runs out
    assert dart_keep(feats, [0, 1], pool, [0, 1], quota=0).tolist() == [0, 1]


def _context(pad: int, n_text_after: int = 2) -> ScoreContext:
    g = torch.Generator().manual_seed(0)
    n_real, v0, v1 = 4 + 12 + n_text_after, 4, 16
    h = torch.randn(1, n_real, 8, generator=g)
    key = torch.randn(1, 2, n_real, 4, generator=g)
    visual = torch.zeros(1, n_real, dtype=torch.bool)
    visual[:, v0:v1] = True
    if pad:
        h = torch.cat([torch.zeros(1, pad, 8), h], 1)
        key = torch.cat([torch.zeros(1, 2, pad, 4), key], 2)
        visual = torch.cat([torch.zeros(1, pad, dtype=torch.bool), visual], 1)
    real = torch.ones_like(visual)
    real[:, :pad] = False
    return ScoreContext(visual_mask=visual, attention_mask=real, hidden_states=h, key=key)


def test_scorer_ignores_left_padding_and_keeps_the_budget():
    scorer = tokred.create_strategy("dart", keep_ratio=0.7).scorer
    plain = scorer.score(_context(pad=0))
    for pad in (1, 3, 5):
        padded = scorer.score(_context(pad=pad))
        assert torch.equal(padded[:, pad:], plain)  # padding shifts indices; counted from the first real token
    # 12 image tokens: quota floor(0.7 * 12 / 8) = 1; 4 image pivots + 8 picks, with only 2 text pivots 4 + 6
    assert int(plain.sum()) == 4 + 6


def test_scorer_batch_rows_are_independent():
    scorer = tokred.create_strategy("dart", keep_ratio=0.7).scorer
    a, b = _context(pad=0, n_text_after=3), _context(pad=1, n_text_after=2)
    both = ScoreContext(
        visual_mask=torch.cat([a.visual_mask, b.visual_mask]),
        attention_mask=torch.cat([a.attention_mask, b.attention_mask]),
        hidden_states=torch.cat([a.hidden_states, b.hidden_states]),
        key=torch.cat([a.key, b.key]),
    )
    scores = scorer.score(both)
    assert torch.equal(scores[:1], scorer.score(a)) and torch.equal(scores[1:], scorer.score(b))


def test_visit_order_is_the_reference_set_copy_order():
    """``dart_visit_order`` computes (without iterating a set) the order CPython iterates ``set(pivots).copy()``,
    which is what DART's reference visits; checked on many pivot lists, small and large, with and without the resize
    that makes a copy's order differ from the original set's."""
    import random

    from tokred.ops.diversity import dart_visit_order

    rng = random.Random(0)
    copy_differs = 0
    for _ in range(3000):
        pivots = [rng.randrange(rng.choice([16, 600, 3000, 70000])) for _ in range(rng.randint(1, 40))]
        assert dart_visit_order(pivots) == list(set(pivots).copy()), pivots
        copy_differs += list(set(pivots)) != list(set(pivots).copy())
    assert copy_differs > 100  # the copy really matters for larger pivot sets
    # by hand: an 8-slot table, 40 -> slot 0, 7 -> 7, 300 -> 4, 12 -> 4 taken, no room for linear probes at 4 + 9 > 7,
    # so the perturbed jump (4 * 5 + 1 + 0) & 7 = 5
    assert dart_visit_order([40, 7, 300, 12]) == [40, 300, 12, 7]


def test_scorer_visits_pivots_in_the_reference_order(monkeypatch):
    """The scorer hands ``dart_keep`` its pivots in ``dart_visit_order`` (relative indices), not in rank order."""
    import tokred.strategies.dart as dart_module

    from tokred.ops.diversity import dart_visit_order

    seen = []
    real_keep = dart_module.dart_keep

    def spy(features, pivots, pool, keep, quota):
        seen.append(list(pivots))
        return real_keep(features, pivots, pool, keep, quota)

    monkeypatch.setattr(dart_module, "dart_keep", spy)
    ctx = _context(pad=2, n_text_after=4)
    tokred.create_strategy("dart", keep_ratio=0.7).scorer.score(ctx)
    key_l1 = ctx.key.abs().sum(dim=(1, 3))[0]
    image = torch.arange(2 + 4, 2 + 16)
    after = torch.arange(2 + 16, ctx.visual_mask.shape[1])
    ranked = [
        *image[key_l1[image].argsort(descending=True)[:4]].tolist(),
        *after[key_l1[after].argsort(descending=True)[:4]].tolist(),
    ]
    assert seen == [[i + 2 for i in dart_visit_order([i - 2 for i in ranked])]]
