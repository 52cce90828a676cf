"""Train gamma-MoD's shared router for a model of your own (here a tiny LLaVA).

The recipe of `python -m tokred.eval.train_router` without the reference model's data
code: patch the frozen model with `gamma-mod` and a starting router file, make the
router's Linear trainable, and minimise the answer loss plus 0.01 x the router's
cross-entropy against its top-k labels. Save `weight` and `bias` as safetensors: that
file is the strategy's `router=PATH`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import tokred
import torch
from safetensors.torch import save_file
from tokred.eval.train_router import router_loss
from tokred.ops.routing import routable_mask
from tokred.testing.models import tiny_model

model, make_inputs = tiny_model("llava")  # use your own model and processor here
model.requires_grad_(False)
hidden = model.config.text_config.hidden_size
out = Path(tempfile.mkdtemp())
init = out / "router_init.safetensors"
save_file(
    {"weight": torch.randn(2, hidden) * 0.01, "bias": torch.tensor([0.0, 3.0])},
    str(init),
)  # p ~ 0.95

# MoD layers: all but the first `skip_first` and the last `skip_last` layers
# (check the model's ARank profile: tokred analyze arank).
handle = tokred.patch(model, "gamma-mod", router=str(init), skip_first=1, skip_last=1)
router: Any = handle.strategy.router
router.linear.requires_grad_(True)
opt = torch.optim.AdamW(router.linear.parameters(), lr=2e-3)
image_token = model.config.image_token_id
for step in range(3):
    inputs = make_inputs(batch=2, seed=step)  # your processor's (prompt + answer) batch
    labels = inputs["input_ids"].roll(-1, dims=1)  # your answer labels (-100 elsewhere)
    router.record = []  # the router keeps each MoD layer's logits while this is a list
    logits = model(**inputs).logits
    lm = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, :-1].flatten()
    )
    real = inputs["attention_mask"].bool()
    routable = routable_mask(inputs["input_ids"] == image_token, real)
    loss = lm + 0.01 * router_loss(router.record, handle.stats.routed_indices, routable)
    router.record = None
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(f"step {step}: loss {loss.item():.4f}")
handle.remove()

weights = out / "router.safetensors"
save_file(
    {"weight": router.linear.weight.detach(), "bias": router.linear.bias.detach()},
    str(weights),
)
with (
    tokred.patch(
        model, "gamma-mod", router=str(weights), skip_first=1, skip_last=1
    ) as h,
    torch.no_grad(),
):
    model.generate(**make_inputs(), max_new_tokens=2, do_sample=False)
    print("tokens per layer:", h.stats.tokens_per_layer)
