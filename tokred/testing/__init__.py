"""Public test helpers for tokred and its plugin authors.

* `tokred.testing.checks`: the conformance suite (`check_component`, `parametrize_with_checks`);
* `tokred.testing.strategies`: hypothesis strategies for token batches, visual spans, sizes and budgets;
* `tokred.testing.models`: tiny random-config multimodal models of every supported family (offline, < 1 s).
"""

from __future__ import annotations

from tokred.testing.checks import check_component, checks_for, parametrize_with_checks

__all__ = ["check_component", "checks_for", "parametrize_with_checks"]
