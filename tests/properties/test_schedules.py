"""Property and worked-case tests of the built-in schedulers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tokred
from tokred.errors import ConfigError

pytestmark = pytest.mark.properties

SCHEDULERS = ["constant", "one-shot", "linear", "tome", "pyramid", "aim-linear"]

depths = st.integers(min_value=2, max_value=48)
tokens = st.integers(min_value=0, max_value=4096)
ratios = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def _options(name: str, data: st.DataObject) -> dict[str, object]:
    if name == "constant":
        return {"keep_ratio": data.draw(st.floats(min_value=0.01, max_value=1.0))}
    if name == "one-shot":
        return {"layer": data.draw(st.integers(1, 8)), "keep_ratio": data.draw(ratios)}
    if name in ("linear", "aim-linear"):
        l1 = data.draw(st.integers(1, 30))
        return {"l1": l1, "l2": data.draw(st.integers(l1 + 1, 40))}
    if name == "tome":
        return {"r": data.draw(st.integers(0, 64)), "inflect": data.draw(st.floats(-1, 1))}
    return {"ratio": data.draw(st.floats(min_value=0.05, max_value=0.95))}


@pytest.mark.parametrize("name", SCHEDULERS)
@given(data=st.data(), num_layers=depths, num_tokens=tokens)
def test_budgets_non_increasing_and_bounded(name, data, num_layers, num_tokens):
    scheduler = tokred.create_component("scheduler", name, **_options(name, data))
    try:
        budgets = scheduler.budgets(num_layers, num_tokens)
    except ConfigError:
        return  # the options do not fit this depth: refused with a clear error, never a wrong schedule
    assert len(budgets) == num_layers
    assert all(0 <= b <= num_tokens for b in budgets)
    assert all(b2 <= b1 for b1, b2 in zip(budgets, budgets[1:]))


@given(num_layers=depths, num_tokens=tokens, data=st.data())
def test_in_llm_schedules_never_prune_layer_zero(num_layers, num_tokens, data):
    for name in ("one-shot", "linear", "pyramid"):
        scheduler = tokred.create_component("scheduler", name, **_options(name, data))
        try:
            assert scheduler.budgets(num_layers, num_tokens)[0] == num_tokens
        except ConfigError:
            pass


def test_aim_linear_defaults_match_the_paper():
    sched = tokred.create_component("scheduler", "linear")
    assert sched.resolved(28) == (14, 22) and sched.resolved(32) == (13, 21)
    budgets = sched.budgets(28, 1568)
    # 1-indexed layer l <= 14 keeps all, then (22 - l)/8 of them, none from layer 22.
    assert budgets[:14] == [1568] * 14
    assert budgets[14:22] == [1568 * (22 - layer) // 8 for layer in range(15, 23)]
    assert budgets[21:] == [0] * 7


def test_aim_reference_code_offset_shifts_by_one_layer():
    paper = tokred.create_component("scheduler", "linear").budgets(28, 64)
    code = tokred.create_component("scheduler", "linear", reference_code_offset=True).budgets(28, 64)
    assert code == [64] + paper[:-1]


def test_aim_defaults_scale_with_depth():
    sched = tokred.create_component("scheduler", "linear")
    assert sched.resolved(8) == (4, 6)
    assert sched.resolved(56) == (28, 44)


def test_linear_needs_l1_below_l2():
    with pytest.raises(ConfigError, match="l1 < l2"):
        tokred.create_component("scheduler", "linear", l1=10, l2=10).budgets(28, 10)


def test_one_shot_is_fastv():
    assert tokred.create_component("scheduler", "one-shot").budgets(6, 576) == [576, 576, 288, 288, 288, 288]


def test_one_shot_layer_beyond_depth_is_a_clear_error():
    with pytest.raises(ConfigError, match="choose 1..3"):
        tokred.create_component("scheduler", "one-shot", layer=4).budgets(4, 10)


def test_pyramid_defaults_are_pyramiddrop():
    sched = tokred.create_component("scheduler", "pyramid")
    assert sched.resolved(32) == (8, 16, 24)
    budgets = sched.budgets(32, 576)
    assert budgets[0] == 576 and budgets[8] == 288 and budgets[16] == 144 and budgets[24] == 72
    assert budgets[7] == 576 and budgets[31] == 72


def test_pyramid_rejects_bad_boundaries():
    with pytest.raises(ConfigError, match="increasing"):
        tokred.create_component("scheduler", "pyramid", boundaries=(4, 2)).budgets(8, 10)


def test_tome_constant_and_decreasing_r():
    flat = tokred.create_component("scheduler", "tome", r=13)
    assert flat.reductions(12) == [13] * 12
    decreasing = tokred.create_component("scheduler", "tome", r=8, inflect=-1)
    red = decreasing.reductions(5)
    assert red[0] == 16 and red[-1] == 0 and red == sorted(red, reverse=True)


def test_tome_never_removes_more_than_half():
    budgets = tokred.create_component("scheduler", "tome", r=1000).budgets(6, 197)
    for b1, b2 in zip(budgets, budgets[1:]):
        assert b1 - b2 <= b1 // 2


def test_constant_default_keeps_everything():
    assert tokred.create_component("scheduler", "constant").budgets(3, 7) == [7, 7, 7]
