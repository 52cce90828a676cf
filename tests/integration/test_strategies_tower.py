"""VTC-CLS, VisionZip and VisPruner on tiny LLaVA models (CLIP and DINOv2 towers): the survivors equal the papers'
selections (re-implemented in ``tests/tower_references.py`` from an eager tower run), the tower keeps SDPA, nothing is
captured for other mergers, nothing changes when nothing is reduced, a padded batch equals its single runs, and a
tower without a class token (SigLIP) is refused."""

from __future__ import annotations

import functools

import pytest
import torch
from tower_references import eager_tower, feature_layer, layer_keys, ref_visionzip, ref_vispruner, ref_vtc_cls

import tokred
from tokred.errors import UnsupportedModelError
from tokred.ops import keep_count
from tokred.testing.towers import tiny_llava_inputs, tiny_llava_with_tower

pytestmark = pytest.mark.integration

TOWER_STRATEGIES = {
    "vtc-cls": {"keep_ratio": 0.25, "start_layer": 1},
    "visionzip": {"dominant": 9, "contextual": 5},
    "vispruner": {"keep_ratio": 0.3},
}


@functools.cache
def _model(tower: str = "clip", layers: int = 6):
    return tiny_llava_with_tower(tower, layers=layers)


def _positions(stats):
    """For every image, each original patch's position in the decoder sequence (-1 if dropped)."""
    return [pos.tolist() for _, pos in stats.visual_provenance]


def _run(model, inputs, name, options):
    with tokred.patch(model, name, **options) as handle, torch.no_grad():
        logits = model(**inputs).logits[:, -1]
        return logits, handle.stats


@pytest.mark.parametrize("tower", ["clip", "dinov2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("keep_ratio", "start"), [(0.1, None), (0.25, 1), (0.5, 4)])
def test_vtc_cls_keeps_the_papers_selection(tower, seed, keep_ratio, start):
    model = _model(tower)
    inputs = tiny_llava_inputs(model, batch=2, seed=seed)
    _, stats = _run(model, inputs, "vtc-cls", {"keep_ratio": keep_ratio, "start_layer": start})
    attentions, _ = eager_tower(model, inputs["pixel_values"])
    last = feature_layer(model)  # 4 of 6 layers (vision_feature_layer = -2)
    first = round(16 * 6 / 24) if start is None else start
    n = attentions[0].shape[-1] - 1
    k = keep_count(n, keep_ratio, "round")
    for image, pos in enumerate(_positions(stats)):
        kept = [j for j, p in enumerate(pos) if p >= 0]
        assert kept == ref_vtc_cls(attentions, image, list(range(first, last + 1)), k)


@pytest.mark.parametrize("tower", ["clip", "dinov2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("dominant", "contextual"), [(9, 5), (4, 3), (12, 0)])
def test_visionzip_keeps_the_papers_groups(tower, seed, dominant, contextual):
    model = _model(tower)
    inputs = tiny_llava_inputs(model, batch=2, seed=seed)
    _, stats = _run(model, inputs, "visionzip", {"dominant": dominant, "contextual": contextual})
    attentions, hidden = eager_tower(model, inputs["pixel_values"])
    f = feature_layer(model)
    keys = layer_keys(model, torch.from_numpy(hidden[f]).float(), f)  # the feature layer's input is hidden[f]
    for image, pos in enumerate(_positions(stats)):
        dom, targets, groups = ref_visionzip(attentions[f][image], keys[image], dominant, contextual)
        start = min(p for p in pos if p >= 0) - 1  # the [CLS] slot comes first
        rest = [j for j in range(len(pos)) if j not in dom]
        assert [pos[j] - start for j in dom] == list(range(1, dominant))
        expected = [start + dominant + g if contextual else -1 for g in groups]
        assert [pos[j] for j in rest] == expected
        assert all(pos[t] - start - dominant == i for i, t in enumerate(targets))


def test_visionzip_features_are_merged_before_the_projector():
    """The LLM receives [proj(CLS), stock features of the dominant patches, proj(target + mean of its members)]."""
    model = _model("clip")
    inputs = tiny_llava_inputs(model, batch=1, seed=3)
    logits, stats = _run(model, inputs, "visionzip", {"dominant": 9, "contextual": 5})
    attentions, hidden = eager_tower(model, inputs["pixel_values"])
    f = feature_layer(model)
    keys = layer_keys(model, torch.from_numpy(hidden[f]).float(), f)
    dom, targets, groups = ref_visionzip(attentions[f][0], keys[0], 9, 5)
    with torch.no_grad():
        out = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True)
        pre = out.hidden_states[model.config.vision_feature_layer][0]  # (T, C_v), class token first
        rest = [j for j in range(pre.shape[0] - 1) if j not in dom]
        merged = []
        for g, t in enumerate(targets):
            members = [1 + j for j, gg in zip(rest, groups) if gg == g and j != t]
            extra = pre[members].mean(0) if members else torch.zeros_like(pre[0])
            merged.append(pre[1 + t] + extra)
        proj = model.model.multi_modal_projector
        feats = torch.cat([proj(pre[:1]), out.pooler_output[0][dom], proj(torch.stack(merged))])  # (14, C)
        ids = inputs["input_ids"][0]
        image = ids == model.config.image_token_id
        first = int(image.nonzero()[0])
        short = torch.cat([ids[:first], ids[first : first + feats.shape[0]], ids[first + int(image.sum()) :]])
        emb = model.get_input_embeddings()(short[None]).clone()
        emb[0, first : first + feats.shape[0]] = feats
        expected = model(inputs_embeds=emb).logits[:, -1]
    assert stats.visual_tokens_out == 14
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tower", ["clip", "dinov2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("keep_ratio", "important_ratio"), [(0.3, 0.5), (0.7, 0.25), (0.2, 0.0), (0.5, 1.0)])
def test_vispruner_keeps_the_papers_selection(tower, seed, keep_ratio, important_ratio):
    model = _model(tower)
    inputs = tiny_llava_inputs(model, batch=2, seed=seed)
    _, stats = _run(model, inputs, "vispruner", {"keep_ratio": keep_ratio, "important_ratio": important_ratio})
    attentions, hidden = eager_tower(model, inputs["pixel_values"])
    f = feature_layer(model)
    n = attentions[0].shape[-1] - 1
    k = keep_count(n, keep_ratio, "round")
    for image, pos in enumerate(_positions(stats)):
        kept = [j for j, p in enumerate(pos) if p >= 0]
        assert kept == ref_vispruner(attentions[f][image], hidden[f + 1][image], k, important_ratio)


@pytest.mark.parametrize("name", sorted(TOWER_STRATEGIES))
def test_padded_batch_equals_single_runs(name):
    model = _model("clip")
    inputs = tiny_llava_inputs(model, batch=3, seed=5)
    opts = TOWER_STRATEGIES[name]
    with tokred.patch(model, name, **opts) as handle, torch.no_grad():
        batch = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        batch_pos = _positions(handle.stats)
        singles, single_pos = [], []
        for b in range(3):
            keep = inputs["attention_mask"][b].bool()
            one = {k: inputs[k][b : b + 1][:, keep] for k in ("input_ids", "attention_mask")}
            one["pixel_values"] = inputs["pixel_values"][b : b + 1]
            singles.append(model.generate(**one, max_new_tokens=4, do_sample=False)[0, -4:])
            single_pos.append(_positions(handle.stats)[0])
    assert torch.equal(batch[:, -4:], torch.stack(singles))
    for b in range(3):  # same survivors and groups, up to the image's offset in its padded row
        got, want = batch_pos[b], single_pos[b]
        shift = min(p for p in got if p >= 0) - min(p for p in want if p >= 0)
        assert [p - shift if p >= 0 else -1 for p in got] == want


@pytest.mark.parametrize("name", ["vtc-cls", "vispruner"])
def test_keeping_every_patch_is_bitwise_identical(name):
    model = _model("clip")
    inputs = tiny_llava_inputs(model, batch=2, seed=1)
    with torch.no_grad():
        stock = model(**inputs).logits
    with tokred.patch(model, name, keep_ratio=1.0), torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock)


def test_the_tower_keeps_sdpa_and_only_tower_mergers_capture():
    model = _model("clip")
    inputs = tiny_llava_inputs(model, batch=1)
    tower = model.model.vision_tower
    seen = []
    probe = tower.register_forward_pre_hook(lambda m, a: seen.append(m.config._attn_implementation))
    projections = [m for n, m in tower.named_modules() if n.endswith(("q_proj", "k_proj"))]
    hooked = []
    spies = [p.register_forward_pre_hook(lambda m, a: hooked.append(len(m._forward_hooks))) for p in projections]
    try:
        for name, opts in [("divprune", {}), ("vtc-cls", {})]:
            hooked.clear()
            with tokred.patch(model, name, **opts) as handle, torch.no_grad():
                model(**inputs)
            assert (handle._prellm.tower is None) == (name == "divprune")
            assert (sum(hooked) == 0) == (name == "divprune")
        assert not any(p._forward_hooks for p in projections)  # removed after the call
        assert set(seen) == {"sdpa"}
    finally:
        probe.remove()
        for s in spies:
            s.remove()


def test_a_tower_without_a_class_token_is_refused():
    model = tiny_llava_with_tower("siglip", layers=2)
    for name in TOWER_STRATEGIES:
        with pytest.raises(UnsupportedModelError, match="no class token; use divprune"):
            tokred.patch(model, name)
    assert not any(m._forward_hooks for m in model.modules())


def test_start_layer_past_the_feature_layer_is_refused():
    model = _model("clip")
    with pytest.raises(tokred.ConfigError, match="start_layer=5 is past the feature layer 4"):
        tokred.patch(model, "vtc-cls", start_layer=5)
