"""Scores from the registered attention function equal eager attention probabilities; FastV's kept set matches."""

from __future__ import annotations

import pytest
import torch
from tokred.schedules.one_shot import OneShotScheduler
from tokred.strategies.fastv import LastTokenAttentionScorer

import tokred
from tokred.ops.attention import attention_rows
from tokred.pipeline import patch

pytestmark = pytest.mark.integration


def _eager_attentions(model, inputs):
    """Per-layer eager attention probabilities (B, H, N, N) of the unpatched model."""
    original = model.config.get_text_config()._attn_implementation
    model.set_attn_implementation({"text_config": "eager"})
    try:
        with torch.no_grad():
            return model(**inputs, output_attentions=True).attentions
    finally:
        model.set_attn_implementation({"text_config": original})


def _recorder(rows):
    class Recorder(LastTokenAttentionScorer):
        name = "recorder"
        query_rows = rows
        seen: list = []

        def score(self, ctx):
            type(self).seen.append(ctx)
            return torch.rand(ctx.visual_mask.shape)

    return Recorder()


@pytest.mark.parametrize("rows", ["last", "text", "all"])
def test_captured_rows_equal_eager_probabilities(tiny, family, rows):
    model, make = tiny
    adapter = tokred.pipeline.select_adapter(model)
    if rows == "all" and adapter.bidirectional_image_attention():
        pytest.skip(f"{family}: image tokens attend bidirectionally; attention_rows is causal (text rows are checked)")
    if rows == "text" and adapter.bidirectional_prompt:
        pytest.skip(f"{family}: its prompt text attends bidirectionally (prefix-LM); attention_rows is causal")
    inputs = make(batch=2)
    scorer = _recorder(rows)
    strategy = tokred.compose(scorer=scorer, scheduler=OneShotScheduler(layer=2, keep_ratio=0.5))
    with patch(model, strategy), torch.no_grad():
        model(**inputs)
    ctx = type(scorer).seen[-1]
    assert ctx.layer == 1
    probs = attention_rows(
        ctx.query, ctx.key, scaling=ctx.scaling, query_index=ctx.query_index, key_mask=ctx.attention_mask
    )  # (B, H, Q, N)
    eager = _eager_attentions(model, inputs)[1]  # (B, H, N, N)
    expected = eager.gather(2, ctx.query_index[:, None, :, None].expand(-1, eager.shape[1], -1, eager.shape[3]))
    real = inputs["attention_mask"].bool().gather(1, ctx.query_index)[:, None, :, None]  # padded rows are moot
    diff = torch.where(real, (probs - expected).abs(), 0.0)
    assert diff.max().item() <= 2e-6  # fp32 softmax noise; Gemma 4 (unit scaling) and MuSE reach 1.3e-6


def test_fastv_keep_set_equals_eager_selection(tiny):
    model, make = tiny
    inputs = make(batch=2)
    with patch(model, "fastv", layer=2, keep_ratio=0.5) as handle, torch.no_grad():
        model(**inputs)
        keep = handle.stats.kept_indices[2]
    adapter = tokred.pipeline.select_adapter(model)
    eager = _eager_attentions(model, inputs)[1]  # (B, H, N, N)
    score = eager[:, :, -1].mean(1)  # (B, N)
    vis = adapter.visual_mask(inputs["input_ids"])
    if family_has_newlines(adapter):
        vis = _without_newlines(adapter, inputs, vis)
    k = int(0.5 * int(vis[0].sum()))
    expected = tokred.ops.topk_keep(score, k, protected=~vis)
    assert torch.equal(keep, expected)


def family_has_newlines(adapter):
    return adapter.name == "llava-anyres"


def _without_newlines(adapter, inputs, vis):
    with torch.no_grad():
        feats = adapter.base.get_image_features(**adapter.encoder_kwargs(inputs), return_dict=True).pooler_output
    flags = torch.cat([adapter.text_like_rows(f) for f in feats])
    vis = vis.clone()
    vis[adapter.placeholder_mask(inputs["input_ids"])] = ~flags
    return vis
