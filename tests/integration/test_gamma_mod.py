"""gamma-MoD (`strategies/gamma_mod.py`): router file, masked routing, top-k of the shared router's process
probability at every MoD layer, FLOPs prediction and refusals."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import _cached
from safetensors.torch import save_file

import tokred
from tokred import ConfigError
from tokred.budget import predict_tokens_per_layer
from tokred.ops.routing import routable_mask
from tokred.pipeline import patch, select_adapter
from tokred.testing.checks import check_router_output

pytestmark = pytest.mark.integration


def _router_file(tmp_path, hidden, seed=0):
    g = torch.Generator().manual_seed(seed)
    path = tmp_path / "router.safetensors"
    save_file({"weight": torch.randn(2, hidden, generator=g), "bias": torch.randn(2, generator=g)}, str(path))
    return path


def test_refuses_without_or_with_a_wrong_router_file(tmp_path):
    model, _ = _cached("llava")
    with pytest.raises(ConfigError, match="needs trained router weights"):
        patch(model, "gamma-mod", skip_first=1)
    with pytest.raises(ConfigError, match="hidden size"):
        patch(model, "gamma-mod", skip_first=1, router=str(_router_file(tmp_path, 32)))
    with pytest.raises(ConfigError, match="does not exist"):
        patch(model, "gamma-mod", skip_first=1, router=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConfigError, match="leave no MoD layer"):
        patch(model, "gamma-mod", router=str(_router_file(tmp_path, 64)))  # 4 layers: 3 + 1 skipped
    assert "_tokred_handle" not in model.__dict__


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_routes_the_top_process_probability_of_routable_tokens(tmp_path, family):
    model, make = _cached(family)
    inputs = make(batch=2)
    hidden = int(model.config.text_config.hidden_size)
    path = _router_file(tmp_path, hidden)
    from safetensors.torch import load_file

    w = load_file(str(path))
    layers = model.get_decoder().layers
    seen = {}
    with patch(model, "gamma-mod", router=str(path), skip_first=1, skip_last=1) as handle, torch.no_grad():
        hooks = [
            layers[i - 1].register_forward_hook(
                lambda m, a, o, i=i: seen.update({i: o[0] if isinstance(o, tuple) else o})
            )
            for i in (1, 2)
        ]
        try:
            model(**inputs)
        finally:
            for h in hooks:
                h.remove()
        routed = handle.stats.routed_indices
        tokens = handle.stats.tokens_per_layer
    assert sorted(routed) == [1, 2]
    real = inputs["attention_mask"].bool()
    routable = routable_mask(select_adapter(model).visual_mask(inputs["input_ids"]), real)
    for i, keep in routed.items():
        p = (seen[i].float() @ w["weight"].T + w["bias"]).softmax(-1)[..., 1]  # (B, N) own computation
        got = torch.zeros_like(real).scatter(1, keep, True) & real
        for b in range(real.shape[0]):
            idx = routable[b].nonzero().flatten()
            k = math.ceil(0.5 * len(idx))
            top = set(idx[p[b, idx].argsort(descending=True, stable=True)[:k]].tolist())
            want = top | set((real[b] & ~routable[b]).nonzero().flatten().tolist())
            assert set(got[b].nonzero().flatten().tolist()) == want, f"layer {i} row {b}"
        assert tokens[i] == keep.shape[1] < real.shape[1]
    assert tokens[0] == tokens[3] == real.shape[1]


def test_router_passes_the_conformance_checks_with_weights(tmp_path):
    strategy = tokred.create_strategy("gamma-mod")
    strategy.router.load(_router_file(tmp_path, 16), 16)
    check_router_output(strategy.router)


def test_flops_prediction_counts_the_capacity_at_mod_layers():
    s = tokred.create_strategy("gamma-mod", capacity=0.25)
    tokens = predict_tokens_per_layer(s, num_layers=8, text_tokens=10, visual_tokens=100)
    assert tokens == [110, 110, 110, 35, 35, 35, 35, 110]


def test_router_gets_a_gradient_through_the_mlp_weight_and_the_aux_loss(tmp_path):
    from tokred.eval.train_router import router_loss

    model, make = _cached("llava")
    inputs = make(batch=2)
    path = _router_file(tmp_path, int(model.config.text_config.hidden_size))
    model.requires_grad_(False)  # the frozen LLM of train_router
    with patch(model, "gamma-mod", router=str(path), skip_first=1, skip_last=1) as handle:
        router = handle.strategy.router
        router.linear.requires_grad_(True)
        router.record = []
        model(**inputs).logits[:, -1].logsumexp(-1).sum().backward(retain_graph=True)
        lm_grad = router.linear.weight.grad.clone()
        routable = routable_mask(
            select_adapter(model).visual_mask(inputs["input_ids"]), inputs["attention_mask"].bool()
        )
        router.linear.weight.grad = None
        router_loss(router.record, handle.stats.routed_indices, routable).backward()
        router.record = None
    assert lm_grad.abs().sum() > 0, "the LM loss does not reach the router (MLP x weight)"
    model.requires_grad_(True)
    assert router.linear.weight.grad.abs().sum() > 0
