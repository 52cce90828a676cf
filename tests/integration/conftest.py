"""Shared helpers of the pipeline integration tests: tiny models and an explicit no-cache reference
(`tokred.testing.reference`)."""

from __future__ import annotations

import functools

import pytest

from tokred.testing.models import tiny_model
from tokred.testing.reference import reference_last_logits  # noqa: F401  (used by the tests through conftest)

FAMILIES = [
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


@functools.cache
def _cached(family: str):
    return tiny_model(family)


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def tiny(family):
    """(model, make_inputs) of a family, built once per session (tests must leave it unpatched)."""
    model, make = _cached(family)
    yield model, make
    assert "_tokred_handle" not in model.__dict__, "a test left the model patched"
