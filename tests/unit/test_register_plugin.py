"""``tokred.register_plugin`` (in-process plugins) and the adapter choice: the generic adapter is tried last."""

from __future__ import annotations

import sys

import pytest

import tokred
from tokred._plugins import get_plugin_manager
from tokred.adapters import ModelAdapter
from tokred.errors import RegistrationError
from tokred.pipeline import select_adapter
from tokred.testing.models import tiny_model


class QuarterScheduler(tokred.BaseScheduler):
    """Keep a quarter of the visual tokens from layer 1 on."""

    name = "test-quarter"

    def _budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        return [num_tokens] + [num_tokens // 4] * (num_layers - 1)


class SchedulerPlugin:
    @tokred.hookimpl
    def tokred_register_schedulers(self, register):
        register(QuarterScheduler)


class LlavaFamilyAdapter(ModelAdapter):
    """A family adapter for LLaVA-1.5 that the generic adapter would also match."""

    name = "test-llava-family"
    families = "LLaVA-1.5 (test)"
    model_types = ("llava",)

    @classmethod
    def matches(cls, model):
        return model.config.model_type == "llava" and super().matches(model)


ADAPTER_MODULE = '''
"""An installed adapter plugin used by the tests."""
import tokred
from tokred.adapters import ModelAdapter


class EntryPointLlavaAdapter(ModelAdapter):
    """A family adapter for LLaVA-1.5, from an entry point."""

    name = "test-ep-llava"
    families = "LLaVA-1.5 (entry point)"

    @classmethod
    def matches(cls, model):
        return model.config.model_type == "llava" and super().matches(model)


@tokred.hookimpl
def tokred_register_adapters(register):
    register(EntryPointLlavaAdapter)
'''


def test_register_plugin_makes_its_components_available(fresh_plugins):
    assert "test-quarter" not in tokred.list_components("schedulers")
    assert tokred.register_plugin(SchedulerPlugin(), name="test-quarter-plugin") == "test-quarter-plugin"
    assert "test-quarter" in tokred.list_components("schedulers")
    assert tokred.create_component("scheduler", "test-quarter").budgets(3, 8) == [8, 2, 2]


def test_register_plugin_accepts_a_module(fresh_plugins):
    module = type(sys)("tokred_test_inprocess")
    module.tokred_register_schedulers = SchedulerPlugin().tokred_register_schedulers
    name = tokred.register_plugin(module)
    assert name == "tokred_test_inprocess"
    assert "test-quarter" in tokred.list_components("schedulers")


def test_register_plugin_twice_is_refused(fresh_plugins):
    plugin = SchedulerPlugin()
    tokred.register_plugin(plugin, name="first")
    with pytest.raises(RegistrationError, match="already registered"):
        tokred.register_plugin(plugin, name="second")
    with pytest.raises(RegistrationError, match="named 'first' is already registered"):
        tokred.register_plugin(SchedulerPlugin(), name="first")


def test_a_duplicate_component_name_is_refused_and_the_plugin_not_kept(fresh_plugins):
    tokred.register_plugin(SchedulerPlugin(), name="first")
    with pytest.raises(RegistrationError, match="duplicate scheduler name 'test-quarter'") as info:
        tokred.register_plugin(SchedulerPlugin(), name="second")
    assert "'first'" in str(info.value) and "'second'" in str(info.value)
    assert not get_plugin_manager().has_plugin("second")
    assert "test-quarter" in tokred.list_components("schedulers")  # the registries still work


def test_an_unknown_hook_is_refused(fresh_plugins):
    class Typo:
        @tokred.hookimpl
        def tokred_register_shedulers(self, register): ...

    with pytest.raises(RegistrationError, match="unknown hook 'tokred_register_shedulers'"):
        tokred.register_plugin(Typo(), name="typo")
    assert not get_plugin_manager().has_plugin("typo")


def test_a_blocked_plugin_is_skipped(fresh_plugins, monkeypatch):
    monkeypatch.setenv("TOKRED_DISABLED_PLUGINS", "blocked")
    assert tokred.register_plugin(SchedulerPlugin(), name="blocked") is None
    assert "test-quarter" not in tokred.list_components("schedulers")


@pytest.fixture(scope="module")
def llava():
    model, _ = tiny_model("llava")
    return model


def test_without_a_family_adapter_llava_gets_the_generic_one(fresh_plugins, llava):
    assert type(select_adapter(llava)) is ModelAdapter


def test_an_in_process_family_adapter_beats_the_generic_one(fresh_plugins, llava):
    class AdapterPlugin:
        @tokred.hookimpl
        def tokred_register_adapters(self, register):
            register(LlavaFamilyAdapter)

    tokred.register_plugin(AdapterPlugin(), name="test-adapters")
    assert type(select_adapter(llava)) is LlavaFamilyAdapter


def test_an_entry_point_family_adapter_beats_the_generic_one(tmp_path, monkeypatch, fresh_plugins, llava):
    """Entry-point plugins register after the built-ins' generic adapter; the default choice still tries it last."""
    sys.modules.pop("tokred_test_ep_adapter", None)
    (tmp_path / "tokred_test_ep_adapter.py").write_text(ADAPTER_MODULE)
    info = tmp_path / "tokred_test_ep_adapter-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tokred-test-ep-adapter\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[tokred]\nep_adapter = tokred_test_ep_adapter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("TOKRED_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    adapter = select_adapter(llava)
    assert adapter.name == "test-ep-llava"
