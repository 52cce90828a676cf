"""The adapter finds the decoder's final norm under the names families give it (scorers such as DART read it)."""

from __future__ import annotations

import pytest

from tokred.adapters import ModelAdapter, hf
from tokred.testing.models import tiny_model


@pytest.mark.parametrize("name", hf.FINAL_NORM_NAMES)
def test_final_norm_under_each_known_name(name):
    model, _ = tiny_model("llava")
    adapter = ModelAdapter(model)
    norm = adapter.decoder.norm
    assert adapter.final_norm() is norm
    del adapter.decoder.norm
    setattr(adapter.decoder, name, norm)  # e.g. LFM2's final norm is called embedding_norm
    assert adapter.final_norm() is norm


def test_a_decoder_without_a_final_norm_says_none():
    model, _ = tiny_model("llava")
    adapter = ModelAdapter(model)
    del adapter.decoder.norm
    assert adapter.final_norm() is None
