"""Every built-in keep count equals exact rational arithmetic on the decimal ratio (no float error).

The ratios are drawn as decimals ``k / 10**d`` and passed as the float a user types (``-o keep_ratio=0.29``); the
expected counts are computed independently here with `fractions.Fraction` and the rounding rule each reference
uses (floor for AIM, PyramidDrop, constant and random; halves-to-even rounding for FastV).
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tokred
from tokred.ops import keep_count

pytestmark = pytest.mark.properties

tokens = st.integers(min_value=0, max_value=5000)
depths = st.integers(min_value=3, max_value=40)


@st.composite
def decimals(draw: st.DrawFn, lo: int = 0, hi: int | None = None, places: int = 3) -> tuple[float, Fraction]:
    """A decimal ratio in [lo, hi] / 10**places, as (the float a user types, its exact value)."""
    scale = 10**places
    k = draw(st.integers(min_value=lo, max_value=scale if hi is None else hi))
    exact = Fraction(k, scale)
    return float(str(exact.numerator / exact.denominator)), exact


def _floor(x: Fraction) -> int:
    return math.floor(x)


def _round_half_even(x: Fraction) -> int:
    lo = math.floor(x)
    frac = x - lo
    if frac > Fraction(1, 2) or (frac == Fraction(1, 2) and lo % 2 == 1):
        return lo + 1
    return lo


def test_the_float_error_case_of_the_issue():
    one_shot = tokred.create_component("scheduler", "one-shot", layer=2, keep_ratio=0.29)
    assert int(0.29 * 100) == 28  # the bug: float error
    assert one_shot.budgets(4, 100) == [100, 100, 29, 29]
    assert tokred.create_component("scheduler", "constant", keep_ratio=0.29).budgets(2, 100) == [29, 29]
    assert tokred.create_component("merger", "random", keep_ratio=0.29).output_count(100) == 29


@given(ratio=decimals(), n=tokens)
def test_keep_count_matches_fraction_arithmetic(ratio, n):
    value, exact = ratio
    assert keep_count(n, value, "floor") == _floor(exact * n)
    assert keep_count(n, value, "round") == _round_half_even(exact * n)
    assert keep_count(n, value, "ceil") == math.ceil(exact * n)


@given(ratio=decimals(), n=tokens, layer=st.integers(1, 2), rounding=st.sampled_from(["floor", "round", "ceil"]))
def test_one_shot_and_constant_budgets_are_exact(ratio, n, layer, rounding):
    value, exact = ratio
    kept = {"floor": _floor, "round": _round_half_even, "ceil": math.ceil}[rounding](exact * n)
    one_shot = tokred.create_component("scheduler", "one-shot", layer=layer, keep_ratio=value, rounding=rounding)
    assert one_shot.budgets(4, n) == [n] * layer + [kept] * (4 - layer)
    if value > 0:
        constant = tokred.create_component("scheduler", "constant", keep_ratio=value, rounding=rounding)
        assert constant.budgets(3, n) == [kept] * 3


@given(ratio=decimals(), n=tokens)
def test_fastv_rounds_and_random_floors(ratio, n):
    value, exact = ratio
    fastv = tokred.create_strategy("fastv", layer=2, keep_ratio=value)
    assert fastv.scheduler.budgets(4, n)[2] == _round_half_even(exact * n)  # FastV's HF code: round(N (1 - R))
    if value > 0:
        random_in_llm = tokred.create_strategy("random", layer=1, keep_ratio=value)
        assert random_in_llm.scheduler.budgets(3, n)[1] == _floor(exact * n)
        random_pre = tokred.create_strategy("random", keep_ratio=value)
        if n > 0:
            assert random_pre.merger.output_count(n) == max(1, _floor(exact * n))


@given(ratio=decimals(lo=50, hi=950, places=3), n=tokens, num_layers=st.integers(4, 40))
def test_pyramid_stages_are_exact_powers(ratio, n, num_layers):
    value, exact = ratio
    sched = tokred.create_component("scheduler", "pyramid", ratio=value)
    bounds = sched.resolved(num_layers)
    stages = [sum(b <= i for b in bounds) for i in range(num_layers)]
    assert sched.budgets(num_layers, n) == [_floor(exact**s * n) for s in stages]


@given(l1=st.integers(1, 30), gap=st.integers(1, 12), n=tokens, num_layers=depths)
def test_linear_budgets_are_exact(l1, gap, n, num_layers):
    l2 = l1 + gap
    sched = tokred.create_component("scheduler", "linear", l1=l1, l2=l2)
    expected = [n if i <= l1 else _floor(Fraction(max(l2 - i, 0), l2 - l1) * n) for i in range(1, num_layers + 1)]
    assert sched.budgets(num_layers, n) == expected


@given(r=st.integers(0, 40), inflect=decimals(lo=-100, hi=100, places=2), num_layers=st.integers(2, 30))
def test_tome_per_layer_r_is_exact(r, inflect, num_layers):
    value, exact = inflect
    sched = tokred.create_component("scheduler", "tome", r=r, inflect=value)
    lo = _floor(r * (1 - exact))
    hi = 2 * r - lo
    expected = [_floor(lo + Fraction(hi - lo) * i / (num_layers - 1)) for i in range(num_layers)]
    assert sched.reductions(num_layers) == expected


@given(ratio=decimals(lo=1), n=st.integers(1, 3000))
def test_aim_merge_counts_are_exact(ratio, n):
    from tokred.strategies.aim import merge_rounds, reference_rounds

    value, exact = ratio
    rounds = merge_rounds(n, value)
    out = n - sum(rounds)
    exps = reference_rounds(value)
    if exps is None:
        assert out == min(n, max(1, _floor(exact * n))) or (out == 1 and n == 1)
    else:  # AIM's own schedules: r_i = n // 2**e_i of the original count, 1 - ratio = sum(2**-e_i)
        assert sum(Fraction(1, 2**e) for e in exps) == 1 - exact
        expected, left = [], n
        for e in exps:
            r = min(n // 2**e, left // 2)
            if r:
                expected.append(r)
                left -= r
        assert rounds == expected
    assert all(r <= (n - sum(rounds[:i])) // 2 for i, r in enumerate(rounds))  # each round is a valid bipartite one


@pytest.mark.parametrize(
    ("n", "keep", "rounds", "out"),
    [
        (196, 0.25, [98, 49], 49),  # AIM video default, per frame
        (169, 0.25, [84, 42], 43),  # the reference's round sizes, not a third one-token round
        (729, 0.25, [364, 182], 183),
        (50, 0.25, [25, 12], 13),
        (576, 0.4375, [288, 36], 252),  # AIM image default (LLaVA-1.5)
        (576, 0.125, [288, 144, 72], 72),
    ],
)
def test_aim_reference_round_sizes(n, keep, rounds, out):
    from tokred.strategies.aim import merge_rounds

    assert merge_rounds(n, keep) == rounds
    assert tokred.create_component("merger", "aim", keep_ratio=keep).output_count(n) == out
