"""Patch a model in ten lines: FastV on a tiny random LLaVA, bitwise restore."""

import tokred
import torch
from tokred.testing.models import tiny_model

model, make_inputs = tiny_model("llava")  # a 4-layer random LLaVA, built offline
inputs = make_inputs(batch=2)  # input_ids (left-padded), attention_mask, pixel_values

with torch.no_grad():
    before = model(**inputs).logits
    with tokred.patch(model, "fastv", keep_ratio=0.5) as handle:
        model(**inputs)
        print(handle.stats.tokens_per_layer)  # shorter from layer 2 on
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        print(out[:, inputs["input_ids"].shape[1] :])  # 4 new tokens per sample
    after = model(**inputs).logits

tokens = handle.stats.tokens_per_layer
assert tokens[2] < tokens[1] and len(set(tokens[2:])) == 1  # dropped once, at K=2
assert list(handle.stats.kept_indices) == [2]  # the layer where the kept set changed
assert torch.equal(before, after)  # leaving the context restored the model bitwise
