"""Mixture-of-Depths token routing in the pipeline (the `Router` role): skipped tokens pass a layer unchanged and are
absent from its keys, values and cache; decode, batches and masks stay consistent."""

from __future__ import annotations

import pytest
import torch
from conftest import _cached

from tokred import BaseRouter, ConfigError, RouteDecision, Strategy, UnsupportedModelError
from tokred.adapters import hf
from tokred.ops.routing import routable_mask
from tokred.pipeline import patch, select_adapter
from tokred.testing.reference import capture_decoder_inputs

pytestmark = pytest.mark.integration

FAMILIES = ["llava", "qwen2_vl", "gemma3"]  # Llama, M-RoPE, sliding windows + post-feedforward norm
GEN = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)


class ProjectionRouter(BaseRouter):
    """Test router: scores and weights from a fixed random projection of the hidden states."""

    name = "test-projection"
    weighted = True

    def __init__(self, layers: list[int], share: float | None = 0.5, weighted: bool = True) -> None:
        super().__init__()
        self._layers, self.share, self.use_weight = layers, share, weighted
        self.v = torch.randn(256, generator=torch.Generator().manual_seed(7))

    def layers(self, num_layers: int) -> list[int]:
        return self._layers

    def capacity(self, layer: int, routable: int) -> int:
        return routable if self.share is None else int(routable * self.share)

    def route(self, ctx):
        s = ctx.hidden_states.float() @ self.v[: ctx.hidden_states.shape[-1]]  # (B, N)
        return RouteDecision(s, torch.sigmoid(s) if self.use_weight else None)


class Routed(Strategy):
    """Test strategy: one router, nothing else."""

    name = "test-routed"

    def __init__(self, router: BaseRouter) -> None:
        self._router = router
        super().__init__()

    def build(self):
        self.router = self._router
        return None, None, None


def _gen(model, inputs, **kw):
    with torch.no_grad():
        return model.generate(**inputs, **GEN, **kw)


@pytest.fixture(params=FAMILIES)
def tiny(request):
    model, make = _cached(request.param)
    yield model, make
    assert "_tokred_handle" not in model.__dict__


def test_routing_everything_is_bitwise_identical(tiny):
    model, make = tiny
    inputs = make(batch=2)
    with torch.no_grad():
        ref, ref_gen = model(**inputs).logits, _gen(model, inputs)
        with patch(model, Routed(ProjectionRouter([1, 2], share=None, weighted=False))) as handle:
            out, gen = model(**inputs).logits, _gen(model, inputs)
            assert set(handle.stats.routed_indices) == {1, 2}
    assert torch.equal(out, ref)
    assert torch.equal(gen.sequences, ref_gen.sequences)
    assert all(torch.equal(a, b) for a, b in zip(gen.logits, ref_gen.logits))


def _reference(model, inputs, layers, router):
    """Last-token logits of an independent full-length computation: at a MoD layer every token runs, with the
    skipped tokens masked as keys (and their rows discarded: they keep their input), and the MLP branch of the
    processed routable tokens scaled by the router weight; the routing choice is recomputed here (own top-k)."""
    embeds, side, _ = capture_decoder_inputs(model, inputs)
    adapter = select_adapter(model)
    real = inputs["attention_mask"].bool()
    routable = routable_mask(adapter.visual_mask(inputs["input_ids"]), real)  # (B, N)
    b, n = real.shape
    dec = model.get_decoder()
    h, chosen = embeds.clone(), {}
    with torch.no_grad():
        for i, layer in enumerate(dec.layers):
            pe, mask, pid = side[i]
            base = torch.ones(n, n, dtype=torch.bool).tril()[None, None].expand(b, 1, n, n)
            if torch.is_tensor(mask):
                base = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
            proc = torch.ones(b, n, dtype=torch.bool)
            weight = torch.ones(b, n)
            if i in layers:
                s = h.float() @ router.v[: h.shape[-1]]  # (B, N)
                for r in range(b):
                    idx = routable[r].nonzero().flatten()
                    top = idx[s[r, idx].argsort(descending=True, stable=True)[: int(len(idx) * router.share)]]
                    proc[r] = ~routable[r]
                    proc[r, top] = True
                weight = torch.where(routable, torch.sigmoid(s), weight)
                chosen[i] = proc.clone()
            allowed = base & proc[:, None, None, :]
            allowed = allowed | torch.eye(n, dtype=torch.bool)[None, None] & ~proc[:, None, :, None]
            hook = hf.layer_mlp_output(layer).register_forward_hook(lambda m, a, o, w=weight: o * w[:, :, None])
            kwargs = {}
            call = hf.CallArgs((), kwargs)
            call.attention_mask, call.position_embeddings, call.position_ids, call.cache = allowed, pe, pid, None
            try:
                out = layer(h, use_cache=False, **kwargs)
            finally:
                hook.remove()
            out = out[0] if isinstance(out, tuple) else out
            h = torch.where(proc[:, :, None], out, h)

    def swap(mod, args, o):
        return (h, *o[1:]) if isinstance(o, tuple) else h

    handle = dec.layers[-1].register_forward_hook(swap)
    try:
        with torch.no_grad():
            return model(**inputs, use_cache=False).logits[:, -1], chosen
    finally:
        handle.remove()


def test_routed_prefill_matches_full_length_reference(tiny):
    model, make = tiny
    inputs = make(batch=2)
    router = ProjectionRouter([1, 2])
    with patch(model, Routed(router)) as handle, torch.no_grad():
        logits = model(**inputs).logits[:, -1]
        routed = handle.stats.routed_indices
        tokens = handle.stats.tokens_per_layer
    ref, chosen = _reference(model, inputs, [1, 2], router)
    n = inputs["input_ids"].shape[1]
    real = inputs["attention_mask"].bool()
    for i, keep in routed.items():
        got = torch.zeros(real.shape, dtype=torch.bool).scatter(1, keep, True)
        assert torch.equal(got & real, chosen[i] & real), f"layer {i}: another token set than the reference's"
        assert tokens[i] == keep.shape[1] < n
    assert (logits - ref).abs().max().item() <= 1e-5


def test_skipped_tokens_pass_unchanged_and_question_is_processed(tiny):
    model, make = tiny
    inputs = make(batch=2)
    layers = model.get_decoder().layers
    seen = {}

    def grab(key):
        return lambda m, a, o: seen.update({key: o[0] if isinstance(o, tuple) else o})

    with patch(model, Routed(ProjectionRouter([2]))) as handle, torch.no_grad():
        hooks = [layers[1].register_forward_hook(grab("in")), layers[2].register_forward_hook(grab("out"))]
        hooks.append(
            layers[2].register_forward_pre_hook(
                lambda m, a, k: seen.update(rows=hf.CallArgs(a, k).hidden_states.shape[1]), with_kwargs=True
            )
        )
        try:
            model(**inputs)
        finally:
            for h in hooks:
                h.remove()
        keep = handle.stats.routed_indices[2]
    real = inputs["attention_mask"].bool()
    routable = routable_mask(select_adapter(model).visual_mask(inputs["input_ids"]), real)
    proc = torch.zeros_like(real).scatter(1, keep, True)
    assert bool(proc[real & ~routable].all()), "a question token skipped a MoD layer"
    assert (proc & routable).sum(1).tolist() == [int(r * 0.5) for r in routable.sum(1).tolist()]
    assert seen["rows"] == keep.shape[1] < real.shape[1]  # the layer itself ran on the routed rows only
    skipped = real & ~proc
    assert torch.equal(seen["out"][skipped], seen["in"][skipped]), "a skipped token's hidden state changed"
    assert not torch.equal(seen["out"][proc & real], seen["in"][proc & real])


def test_cached_generation_equals_no_cache_and_cache_holds_routed_tokens(tiny):
    model, make = tiny
    inputs = make(batch=1)
    n = inputs["input_ids"].shape[1]
    with patch(model, Routed(ProjectionRouter([1, 3]))) as handle:
        cached = _gen(model, inputs)
        lengths = [hf.cache_layer_length(x) for x in hf.cache_layers(hf.output_cache(cached))]
        tokens = handle.stats.tokens_per_layer
        plain = _gen(model, inputs, use_cache=False)
    assert lengths == [t + 2 for t in tokens]  # the last generated token is never fed back
    assert lengths[0] == n + 2 and lengths[1] < n + 2 and lengths[3] < n + 2
    assert torch.equal(cached.sequences, plain.sequences)
    assert all((a - b).abs().max().item() <= 1e-5 for a, b in zip(cached.logits, plain.logits))


def test_left_padded_batch_equals_single_runs(tiny):
    model, make = tiny
    batch = make(batch=3)
    with patch(model, Routed(ProjectionRouter([1, 2]))):
        out = _gen(model, batch)
        err = 0.0
        for b in range(3):
            keep = batch["attention_mask"][b].bool()
            one = {k: v[b : b + 1][:, keep] if k in ("input_ids", "attention_mask") else v for k, v in batch.items()}
            one.update(_images(batch, b))
            single = _gen(model, one)
            for step, logits in enumerate(out.logits):
                err = max(err, (logits[b] - single.logits[step][0]).abs().max().item())
    assert err <= 1e-5


def _images(batch, b):
    n = batch["input_ids"].shape[0]
    out = {}
    for key, value in batch.items():
        if key in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"):
            if key != "input_ids" and key != "attention_mask":
                out[key] = value[b : b + 1][:, batch["attention_mask"][b].bool()]
            continue
        if key == "pixel_values" and value.shape[0] != n and value.shape[0] % n == 0:
            per = value.shape[0] // n
            out[key] = value[b * per : (b + 1) * per]
        else:
            out[key] = value[b : b + 1]
    return out


class _DropAndRoute(Routed):
    def build(self):
        from tokred import create_strategy

        fastv = create_strategy("fastv")
        self.router = self._router
        return None, fastv.scorer, fastv.scheduler


def test_refusals_before_anything_is_installed():
    model, _ = _cached("llava")
    with pytest.raises(ConfigError, match="layer 0 is never routed"):
        patch(model, Routed(ProjectionRouter([0, 1])))
    with pytest.raises(ConfigError, match="combines a router with in-LLM dropping"):
        patch(model, _DropAndRoute(ProjectionRouter([1])))
    assert "_tokred_handle" not in model.__dict__
    qwen3, _ = _cached("qwen3_vl")
    with pytest.raises(UnsupportedModelError, match="DeepStack"):
        patch(qwen3, Routed(ProjectionRouter([1])))
