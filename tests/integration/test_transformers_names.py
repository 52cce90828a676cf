"""The pipeline on the installed transformers' call names: a caller's own decode loop works under every cache keyword
the installed version accepts (5.24 renamed ``past_key_values`` to ``cache`` and keeps the old name as an alias)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import _cached

from tokred.adapters import hf
from tokred.pipeline import patch

pytestmark = pytest.mark.integration

#: Cache keywords the installed transformers accepts: both from 5.24 (the old one deprecated), only the old before.
ACCEPTED = hf.CACHE_NAMES if hf.at_least("5.24") else ("past_key_values",)


def _manual_greedy(model, inputs, name, steps):
    """Prefill, then ``steps`` greedy decode steps passing the cache under keyword ``name``; returns logits per step."""
    mask = inputs["attention_mask"]
    out = model(**inputs, use_cache=True)
    logits = [out.logits[:, -1]]
    cache = hf.output_cache(out)
    for _ in range(steps):
        nxt = logits[-1].argmax(-1, keepdim=True)  # (B, 1)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        out = model(input_ids=nxt, attention_mask=mask, use_cache=True, **{name: cache})
        cache = hf.output_cache(out)
        logits.append(out.logits[:, -1])
    return torch.stack(logits, 1), cache  # (B, steps + 1, V)


@pytest.mark.parametrize("name", ACCEPTED)
def test_caller_decode_loop_under_each_cache_keyword_equals_generate(name):
    model, make = _cached("llava")
    inputs = make(batch=2)
    n = inputs["input_ids"].shape[1]
    with patch(model, "fastv", keep_ratio=0.5) as handle, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the deprecated alias warns; it must still work
        logits, cache = _manual_greedy(model, inputs, name, steps=3)
        manual_tokens = list(handle.stats.tokens_per_layer)
        ref = model.generate(
            **inputs, max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
    assert min(manual_tokens) < n, "nothing was pruned"
    assert manual_tokens == handle.stats.tokens_per_layer
    lengths = hf.cache_layers(cache)
    assert min(hf.cache_layer_length(x) for x in lengths) < hf.cache_layer_length(lengths[0])  # real eviction
    scores = torch.stack(ref.scores, 1)  # (B, 4, V)
    assert torch.equal(logits.argmax(-1), scores.argmax(-1))
    assert (logits - scores).abs().max().item() <= 1e-5
