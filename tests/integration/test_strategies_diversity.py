"""DivPrune and CDPruner on tiny LLaVA models (CLIP tower): the survivors equal the papers' selections (compact
re-implementations in ``tests/paper_references.py``) and a padded batch equals its single runs."""

from __future__ import annotations

import functools

import pytest
import torch
from paper_references import ref_divprune

import tokred
from tokred.ops import keep_count
from tokred.testing.models import tiny_model

pytestmark = pytest.mark.integration

TEXT_INPUTS = ("input_ids", "attention_mask")


@functools.cache
def _llava():
    return tiny_model("llava")


def _image_features(model, inputs):
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output
    return [f.double() for f in feats]  # (n, C) per image


def _survivors(stats):
    """Kept original rows of every image, from the provenance (sample order)."""
    return [torch.nonzero(pos >= 0)[:, 0].tolist() for _, pos in stats.visual_provenance]


def _run(model, inputs, name, options):
    with tokred.patch(model, name, **options) as handle, torch.no_grad():
        logits = model(**inputs).logits[:, -1]
        return logits, _survivors(handle.stats), handle.stats


def _single(inputs, b):
    keep = inputs["attention_mask"][b].bool()
    one = {k: inputs[k][b : b + 1][:, keep] for k in TEXT_INPUTS}
    one["pixel_values"] = inputs["pixel_values"][b : b + 1]
    return one


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("keep_ratio", [0.098, 0.3, 0.55])
def test_divprune_keeps_the_papers_selection(seed, keep_ratio):
    model, make = _llava()
    inputs = make(batch=2, seed=seed)
    _, kept, stats = _run(model, inputs, "divprune", {"keep_ratio": keep_ratio})
    feats = _image_features(model, inputs)
    n = feats[0].shape[0]
    k = keep_count(n, keep_ratio, "round")
    assert [len(s) for s in kept] == [k, k]
    assert stats.visual_tokens_out == 2 * k
    for got, f in zip(kept, feats):
        assert got == sorted(ref_divprune(f.numpy(), k))


def test_divprune_batch_equals_single_runs():
    model, make = _llava()
    inputs = make(batch=3, seed=4)
    logits, kept, _ = _run(model, inputs, "divprune", {"keep_ratio": 0.2})
    for b in range(3):
        one_logits, one_kept, _ = _run(model, _single(inputs, b), "divprune", {"keep_ratio": 0.2})
        assert one_kept == [kept[b]]
        assert (one_logits[0] - logits[b]).abs().max().item() <= 1e-5
