"""Shared helpers of the pipeline integration tests: tiny models and an explicit no-cache reference
(`tokred.testing.reference`)."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest

from tokred.testing.models import tiny_model
from tokred.testing.reference import reference_last_logits  # noqa: F401  (used by the tests through conftest)

#: Families with a hand-written tiny model (``tokred.testing.models``).
HAND_WRITTEN = [
    "llava",
    "llava_next",
    "llava_onevision",
    "qwen2_vl",
    "qwen2_5_vl",
    "idefics3",
    "smolvlm",
    "internvl",
    "gemma3",
    "qwen3_vl",
]
#: The committed sweep; TOKRED_SWEEP_JSON points the tests at another run's JSON (e.g. a sweep in progress).
SWEEP = Path(
    os.environ.get("TOKRED_SWEEP_JSON") or Path(__file__).resolve().parents[2] / "docs" / "_sweep" / "sweep.json"
)


def swept_families() -> list[str]:
    """Every family the committed sweep (scripts/sweep_families.py) found WORKS on a generic tiny model and that
    the installed transformers has: the pipeline tests run on each of them too."""
    from tokred.testing.generic import image_text_families

    results = json.loads(SWEEP.read_text())["results"] if SWEEP.exists() else []
    have = image_text_families()
    return [
        r["family"]
        for r in results
        if r["status"] == "WORKS" and r["family"] not in HAND_WRITTEN and r["family"] in have
    ]


FAMILIES = HAND_WRITTEN + swept_families()


@functools.cache
def _cached(family: str):
    if family in HAND_WRITTEN:
        return tiny_model(family)
    from tokred.testing.sweep import build_family

    model, make, _ = build_family(family)
    return model, make


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def tiny(family):
    """(model, make_inputs) of a family, built once per session (tests must leave it unpatched)."""
    model, make = _cached(family)
    yield model, make
    assert "_tokred_handle" not in model.__dict__, "a test left the model patched"


def pytest_collection_modifyitems(config, items):
    """Every family runs the full cross product of a test's parameters (CI does: about 100 s more per transformers
    version than the first parameter alone). For a quick local run, TOKRED_FAST_SWEPT=1 runs a family from the sweep
    (not hand-written) with the first value of its other parameters only (e.g. fastv, not every pruning strategy)."""
    if not os.environ.get("TOKRED_FAST_SWEPT"):
        return
    kept, dropped, seen = [], [], set()
    for item in items:
        spec = getattr(item, "callspec", None)
        family = spec.params.get("family") if spec is not None else None
        key = (item.module.__name__ if item.module else "", item.originalname, family)
        first = key not in seen
        seen.add(key)
        (kept if family in (None, *HAND_WRITTEN) or first else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
