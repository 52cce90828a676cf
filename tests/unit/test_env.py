"""Environment switches accept 0/1/true/false/yes/no (any case) and refuse anything else with their name."""

from __future__ import annotations

import pytest

from tokred._env import check_switches, env_flag
from tokred.errors import ConfigError


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("true", True), ("YES", True), (" yes ", True), ("0", False), ("false", False), ("No", False),
     ("", False)],
)  # fmt: skip
def test_accepted_values(monkeypatch, raw, value):
    monkeypatch.setenv("TOKRED_DEBUG", raw)
    assert env_flag("TOKRED_DEBUG") is value


def test_unset_is_the_default(monkeypatch):
    monkeypatch.delenv("TOKRED_DEBUG", raising=False)
    assert env_flag("TOKRED_DEBUG") is False and env_flag("TOKRED_DEBUG", default=True) is True


@pytest.mark.parametrize("raw", ["on", "off", "2", "maybe", "y", "-1"])
def test_other_values_are_refused_with_the_name(monkeypatch, raw):
    monkeypatch.setenv("TOKRED_TRACE_PLUGINS", raw)
    with pytest.raises(ConfigError, match=f"TOKRED_TRACE_PLUGINS='{raw}'"):
        check_switches()
