"""Shared fixtures and hypothesis profiles.

Profiles: ``dev`` (25 examples, fast local iteration) and ``ci`` (200 examples, no deadline). ``HYPOTHESIS_PROFILE``
selects one; without it, ``ci`` is used when ``CI`` is set and ``dev`` otherwise.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile(
    "ci", max_examples=200, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def fresh_plugins():
    """Rebuild the plugin manager and registries around a test (e.g. after adding a plugin to sys.path)."""
    from tokred._plugins import reset_plugins

    reset_plugins()
    yield
    reset_plugins()
