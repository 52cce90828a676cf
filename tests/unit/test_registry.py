"""Registry, config validation and the public list/create functions."""

from __future__ import annotations

import pytest
from pydantic import Field

import tokred
from tokred._registry import Registry
from tokred.errors import ConfigError, RegistrationError, UnknownNameError

BUILTIN_STRATEGIES = {"aim", "aim-merge", "aim-prune", "fastv", "tome", "random", "pooling", "none"}


def test_builtin_strategies_are_registered():
    assert BUILTIN_STRATEGIES <= set(tokred.list_strategies())


def test_builtin_components_are_registered():
    assert {"aim", "tome", "pooling", "random"} <= set(tokred.list_components("mergers"))
    assert {"aim", "fastv", "random"} <= set(tokred.list_components("scorer"))
    assert {"constant", "one-shot", "linear", "tome", "pyramid"} <= set(tokred.list_components("schedulers"))


def test_list_strategies_pattern():
    assert tokred.list_strategies("aim*") == ["aim", "aim-merge", "aim-prune"]


def test_unknown_strategy_suggests_close_name():
    with pytest.raises(UnknownNameError) as info:
        tokred.create_strategy("fastV")
    message = str(info.value)
    assert "Did you mean: fastv" in message
    assert "Available:" in message and "aim" in message


def test_unknown_kind_lists_kinds():
    with pytest.raises(UnknownNameError, match="Available: mergers"):
        tokred.list_components("widgets")


def test_unknown_option_suggests_valid_option():
    with pytest.raises(ConfigError, match="did you mean 'keep_ratio'"):
        tokred.create_strategy("fastv", keep_ration=0.5)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_out_of_range_option_is_refused(value):
    with pytest.raises(ConfigError, match="keep_ratio"):
        tokred.create_strategy("fastv", keep_ratio=value)


def test_config_is_frozen():
    strategy = tokred.create_strategy("fastv")
    with pytest.raises(Exception, match="frozen"):
        strategy.config.keep_ratio = 0.1  # type: ignore[misc]


def test_create_strategy_passes_instances_through():
    strategy = tokred.create_strategy("fastv")
    assert tokred.create_strategy(strategy) is strategy
    with pytest.raises(ConfigError):
        tokred.create_strategy(strategy, keep_ratio=0.3)


def test_strategy_components_follow_options():
    strategy = tokred.create_strategy("fastv", layer=3, keep_ratio=0.25)
    assert strategy.scheduler is not None and strategy.scorer is not None and strategy.merger is None
    assert strategy.scheduler.budgets(6, 100) == [100, 100, 100, 25, 25, 25]


def test_with_budget_changes_only_the_knob():
    strategy = tokred.create_strategy("aim", l1=3)
    other = strategy.with_budget(0.5)
    assert other.config.keep_ratio == 0.5 and other.config.l1 == 3


def test_compose_builds_an_adhoc_strategy():
    s = tokred.compose(
        scorer=tokred.create_component("scorer", "random", seed=3),
        scheduler=tokred.create_component("scheduler", "one-shot", layer=1, keep_ratio=0.5),
        label="mine",
    )
    assert s.scheduler is not None and s.scheduler.budgets(3, 10) == [10, 5, 5]


def test_scorer_without_scheduler_is_refused():
    with pytest.raises(ConfigError, match="needs a scheduler"):
        tokred.compose(scorer=tokred.create_component("scorer", "random"))


class _Dummy(tokred.BaseScorer):
    """A scorer for registry tests."""

    name = "dummy"

    class Config(tokred.ComponentConfig):
        alpha: float = Field(1.0, ge=0, description="A number.")


class _Other(tokred.BaseScorer):
    """Another scorer with the same name."""

    name = "dummy"


def test_duplicate_names_name_both_origins():
    reg: Registry[type[tokred.BaseScorer]] = Registry("scorer", tokred.BaseScorer)
    reg.register(_Dummy, origin="plugin-a")
    with pytest.raises(RegistrationError) as info:
        reg.register(_Other, origin="plugin-b")
    assert "plugin-a" in str(info.value) and "plugin-b" in str(info.value)


def test_registering_wrong_base_is_refused():
    reg: Registry[type[tokred.BaseScorer]] = Registry("scorer", tokred.BaseScorer)

    class NotAScorer:
        name = "x"

    with pytest.raises(RegistrationError, match="must subclass"):
        reg.register(NotAScorer)


def test_registering_nameless_is_refused():
    reg: Registry[type[tokred.BaseScorer]] = Registry("scorer", tokred.BaseScorer)

    class Nameless(tokred.BaseScorer):
        """No name."""

    with pytest.raises(RegistrationError, match="no 'name'"):
        reg.register(Nameless)


def test_registry_case_insensitive_suggestion():
    reg: Registry[type[tokred.BaseScorer]] = Registry("scorer", tokred.BaseScorer)
    reg.register(_Dummy)
    with pytest.raises(UnknownNameError, match="Did you mean: dummy"):
        reg.get("DUMMY")
