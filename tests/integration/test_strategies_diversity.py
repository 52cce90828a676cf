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


def _dart_inputs_by_hand(model, inputs, layer):
    """Layer ``layer - 1``'s post-RoPE keys (N, H*D) and final-normed output (N, C) of one unpadded sample."""
    from transformers.models.llama.modeling_llama import rotate_half

    lm = model.model.language_model
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states
        x = hs[layer - 1]  # input of layer K-1
        block = lm.layers[layer - 1]
        xn = block.input_layernorm(x)
        attn = block.self_attn
        k = attn.k_proj(xn).view(1, x.shape[1], -1, attn.head_dim).transpose(1, 2)  # (1, H_kv, N, D)
        cos, sin = lm.rotary_emb(xn, torch.arange(x.shape[1])[None])
        k = k * cos[:, None] + rotate_half(k) * sin[:, None]
        normed = lm.norm(hs[layer])  # output of layer K-1 through the final norm
    keys = k[0].transpose(0, 1).reshape(x.shape[1], -1)  # (N, H*D)
    return keys.double().numpy(), normed[0].double().numpy()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("keep_ratio", "layer"), [(0.25, 2), (0.5, 1), (0.7, 3)])
def test_dart_keeps_the_papers_selection(seed, keep_ratio, layer):
    from paper_references import ref_dart

    model, make = _llava()
    inputs = make(batch=1, seed=seed)
    ids = inputs["input_ids"][0]
    image = torch.nonzero(ids == model.config.image_token_id)[:, 0]
    span = range(int(image[0]), int(image[-1]) + 1)
    keys, normed = _dart_inputs_by_hand(model, inputs, layer)
    want = ref_dart(keys, normed, span, keep_ratio)
    with tokred.patch(model, "dart", keep_ratio=keep_ratio, layer=layer) as handle, torch.no_grad():
        model(**inputs)
        kept = handle.stats.kept_indices[layer][0]
    got = [int(i) for i in kept if int(i) in span]
    assert got == want
    VISIT_ORDER_MATTERS.append(want != ref_dart(keys, normed, span, keep_ratio, visit="rank"))
    assert len(got) == 4 + 8 * int(keep_ratio * len(span) / 8 + 1e-9)
    assert [int(i) for i in kept if int(i) not in span] == [i for i in range(len(ids)) if i not in span]


VISIT_ORDER_MATTERS: list[bool] = []


def test_dart_visiting_order_changes_the_result():
    """Over the cases above, visiting the pivots in rank order instead of the set's order changes the kept set."""
    if not VISIT_ORDER_MATTERS:
        pytest.skip("run with test_dart_keeps_the_papers_selection")
    assert any(VISIT_ORDER_MATTERS)


def test_dart_batch_equals_single_runs_in_generate():
    model, make = _llava()
    inputs = make(batch=3, seed=7)
    kw = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with tokred.patch(model, "dart", keep_ratio=0.3) as handle, torch.no_grad():
        out = model.generate(**inputs, **kw)
        kept = handle.stats.kept_indices[2]
        pad = (inputs["attention_mask"] == 0).sum(1)
        singles = []
        for b in range(3):
            singles.append((model.generate(**_single(inputs, b), **kw), handle.stats.kept_indices[2]))
    for b, (one, one_kept) in enumerate(singles):
        real = kept[b][kept[b] >= pad[b]] - pad[b]  # padding rows are never dropped: compare the real ones
        assert torch.equal(one_kept[0], real)
        for step, logits in enumerate(out.logits):
            assert (logits[b] - one.logits[step][0]).abs().max().item() <= 1e-5


def test_cdpruner_conditions_every_image_on_its_own_samples_prompt():
    model, make = _llava()
    inputs = make(batch=2, num_images=2, seed=8)  # images 0, 1 belong to sample 0; 2, 3 to sample 1
    _, kept, stats = _run(model, inputs, "cdpruner", {"keep_ratio": 0.3, "relevance_weight": 1.0})
    feats = _image_features(model, inputs)
    texts = _mean_text_embeddings(model, inputs)
    k = keep_count(feats[0].shape[0], 0.3, "round")
    assert [s for s, _ in stats.visual_provenance] == [0, 0, 1, 1]
    for image, (got, f) in enumerate(zip(kept, feats)):
        kernel = ref_cdpruner_kernel(f.numpy(), texts[image // 2].numpy(), 1.0)
        assert got == sorted(ref_dpp_greedy(kernel, k))
