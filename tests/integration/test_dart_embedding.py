"""DART at ``layer=0`` (TensorRT-Edge-LLM's variant on the LLM input embeddings) against a plain re-implementation."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import tokred
from tokred.testing.models import tiny_model
from tokred.testing.reference import capture_decoder_inputs

pytestmark = pytest.mark.integration


def embedding_dart_by_hand(emb, visual, keep_ratio, pivot_image=4, pivot_text=4):
    """The selection written out with Python lists and float64: returns kept image-token sequence positions."""
    n_seq = len(visual)
    img = [i for i in range(n_seq) if visual[i]]
    txt = [i for i in range(n_seq) if not visual[i]]
    rows = [[float(v) for v in emb[i]] for i in range(n_seq)]
    l1 = [sum(abs(v) for v in r) for r in rows]
    l2 = [math.sqrt(sum(v * v for v in r)) for r in rows]

    def top(positions, score, k):
        return sorted(positions, key=lambda a: (-score[a], a))[:k]

    target = max(1, min(len(img), math.ceil(Fraction(str(keep_ratio)) * len(img))))
    image_pivots = top(img, l1, min(pivot_image, target))
    pivots = image_pivots + top(txt, l1, pivot_text)
    kept, pool = list(image_pivots), [i for i in img if i not in image_pivots]
    for j, p in enumerate(pivots):
        remaining = target - len(kept)
        if remaining <= 0 or not pool:
            break
        per = math.ceil(remaining / (len(pivots) - j))
        sim = {c: -sum(a * b for a, b in zip(rows[p], rows[c])) / max(l2[p] * l2[c], 1e-8) for c in pool}
        chosen = top(pool, sim, per)
        kept += chosen
        pool = [c for c in pool if c not in chosen]
    return sorted(kept)


def _kept_positions(stats, ids_row, image_token_id):
    """Sequence positions (in the unreduced prompt) of the visual tokens that survived, from the provenance."""
    ((_, prov),) = stats.visual_provenance
    image = torch.nonzero(ids_row == image_token_id)[:, 0]
    return image[prov >= 0].tolist()


@pytest.mark.parametrize("keep_ratio", [0.1, 0.25, 0.6])
def test_layer0_equals_hand_written_selection(keep_ratio):
    model, make = tiny_model("llava")
    for seed in range(3):
        inputs = make(batch=1, seed=seed)
        embeds, _, _ = capture_decoder_inputs(model, inputs)
        ids = inputs["input_ids"][0]
        want = embedding_dart_by_hand(embeds[0], (ids == model.config.image_token_id).tolist(), keep_ratio)
        with tokred.patch(model, "dart", layer=0, keep_ratio=keep_ratio) as handle, torch.no_grad():
            model(**inputs)
        assert _kept_positions(handle.stats, ids, model.config.image_token_id) == want, f"seed {seed}"
        assert len(want) == math.ceil(Fraction(str(keep_ratio)) * int((ids == model.config.image_token_id).sum()))


def test_layer0_text_pivots_come_from_the_prompt():
    """Changing only the prompt text changes the selection (the text pivots are prompt tokens)."""
    model, make = tiny_model("llava")
    inputs = make(batch=1, seed=4)
    other = dict(inputs)
    ids = inputs["input_ids"].clone()
    text = ids != model.config.image_token_id
    ids[text] = (ids[text] * 7 + 3) % 200 + 1
    other["input_ids"] = ids
    kept = []
    for x in (inputs, other):
        with tokred.patch(model, "dart", layer=0, keep_ratio=0.3) as handle, torch.no_grad():
            model(**x)
        kept.append(_kept_positions(handle.stats, x["input_ids"][0], model.config.image_token_id))
    assert kept[0] != kept[1]


def test_layer0_batch_equals_single_runs():
    model, make = tiny_model("llava")
    batch = make(batch=3, seed=5)
    kw = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with tokred.patch(model, "dart", layer=0, keep_ratio=0.3) as handle, torch.no_grad():
        out = model.generate(**batch, **kw)
        batch_prov = [p for _, p in handle.stats.visual_provenance]
        for b in range(3):
            real = batch["attention_mask"][b].bool()
            one = {
                "input_ids": batch["input_ids"][b : b + 1][:, real],
                "pixel_values": batch["pixel_values"][b : b + 1],
            }
            one["attention_mask"] = torch.ones_like(one["input_ids"])
            single = model.generate(**one, **kw)
            ((_, prov),) = handle.stats.visual_provenance
            assert torch.equal(prov >= 0, batch_prov[b] >= 0), f"sample {b}"
            for step, logits in enumerate(out.logits):
                assert (logits[b] - single.logits[step][0]).abs().max().item() <= 1e-5, f"sample {b}, step {step}"
