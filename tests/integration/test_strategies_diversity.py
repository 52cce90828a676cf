"""DivPrune and CDPruner on tiny LLaVA models (CLIP tower): the survivors equal the papers' selections (compact
re-implementations in ``tests/paper_references.py``) and a padded batch equals its single runs."""

from __future__ import annotations

import functools

import pytest
import torch
from paper_references import ref_cdpruner_kernel, ref_divprune, ref_dpp_greedy

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


def _mean_text_embeddings(model, inputs):
    """The mean LLM input embedding of each sample's non-visual, non-padding tokens, computed by hand."""
    ids = inputs["input_ids"]
    text = (ids != model.config.image_token_id) & inputs["attention_mask"].bool()
    with torch.no_grad():
        emb = model.get_input_embeddings()(torch.where(text, ids, 0)).double()
    return [emb[b][text[b]].mean(0) for b in range(ids.shape[0])]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("keep_ratio", "weight"), [(0.222, 0.5), (0.3, 1.0), (0.55, 0.5), (0.15, 0.0)])
def test_cdpruner_keeps_the_papers_selection(seed, keep_ratio, weight):
    model, make = _llava()
    inputs = make(batch=2, seed=seed)
    options = {"keep_ratio": keep_ratio, "relevance_weight": weight}
    _, kept, stats = _run(model, inputs, "cdpruner", options)
    feats = _image_features(model, inputs)
    texts = _mean_text_embeddings(model, inputs)
    k = keep_count(feats[0].shape[0], keep_ratio, "round")
    assert [len(s) for s in kept] == [k, k] and stats.visual_tokens_out == 2 * k
    for got, f, t in zip(kept, feats, texts):
        kernel = ref_cdpruner_kernel(f.numpy(), t.numpy(), weight)
        assert got == sorted(ref_dpp_greedy(kernel, k))


def test_cdpruner_relevance_follows_the_prompt():
    model, make = _llava()
    inputs = make(batch=1, seed=5)
    other = dict(inputs)
    ids = inputs["input_ids"].clone()
    text = ids != model.config.image_token_id
    ids[text] = (ids[text] * 7 + 3) % 200 + 1  # same image, another prompt
    other["input_ids"] = ids
    _, a, _ = _run(model, inputs, "cdpruner", {"relevance_weight": 1.0})
    _, b, _ = _run(model, other, "cdpruner", {"relevance_weight": 1.0})
    _, c, _ = _run(model, inputs, "cdpruner", {"relevance_weight": 0.0})
    _, d, _ = _run(model, other, "cdpruner", {"relevance_weight": 0.0})
    assert a != b  # the prompt changes the conditional kernel ...
    assert c == d  # ... and nothing else when relevance has no weight


def test_cdpruner_batch_equals_single_runs_in_generate():
    model, make = _llava()
    inputs = make(batch=3, seed=6)
    with tokred.patch(model, "cdpruner", keep_ratio=0.3) as handle, torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        kept = _survivors(handle.stats)
        singles = []
        for b in range(3):
            one = model.generate(
                **_single(inputs, b),
                max_new_tokens=3,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
            singles.append((one, _survivors(handle.stats)))
    for b, (one, one_kept) in enumerate(singles):
        assert one_kept == [kept[b]]
        for step, logits in enumerate(out.logits):
            assert (logits[b] - one.logits[step][0]).abs().max().item() <= 1e-5
