"""Every registered component and strategy passes the conformance suite shipped in tokred.testing."""

from __future__ import annotations

import pytest

import tokred
from tokred._plugins import get_registries
from tokred.testing import check_component, parametrize_with_checks


def _all_components():
    regs = get_registries()
    out = []
    for kind in ("strategies", "mergers", "scorers", "schedulers", "routers"):
        reg = regs.by_kind(kind)
        out += [reg.get(name)() for name in reg.names()]
    return out


@parametrize_with_checks(_all_components())
def test_builtin_conformance(component, check):
    check(component)


def test_check_component_reports_the_failed_check():
    class Broken(tokred.BaseScheduler):
        """Returns an increasing schedule."""

        name = "broken"

        def _budgets(self, num_layers, num_tokens):
            return [min(i, num_tokens) for i in range(num_layers)]

    with pytest.raises((AssertionError, RuntimeError), match="increasing"):
        check_component(Broken())


def test_check_component_catches_undocumented_option():
    from pydantic import Field

    class Undocumented(tokred.BaseScheduler):
        """Has an option without description."""

        name = "undocumented"

        class Config(tokred.ComponentConfig):
            k: int = Field(1, ge=0)

        def _budgets(self, num_layers, num_tokens):
            return [num_tokens] * num_layers

    with pytest.raises(AssertionError, match="check_config failed: option 'k' needs a description"):
        check_component(Undocumented())
