"""PaliGemma (a prefix-LM): its prompt prefix, image tokens and prompt text, attends bidirectionally
(``token_type_ids == 0``), a suffix and the generated tokens causally. Reductions must keep exactly that mask on the
tokens the LM sees, and cached generation must equal a no-cache recomputation."""

from __future__ import annotations

import pytest
import torch

import tokred
from tokred.adapters import hf
from tokred.testing.reference import extend_prompt, reference_last_logits

pytestmark = pytest.mark.integration

GEN = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
#: Prompt variants: all of it prefix (what the processor gives at inference), or a causal suffix of 2 text tokens
#: (what it gives with ``suffix=``).
SUFFIX = [pytest.param(0, id="prefix-only"), pytest.param(2, id="causal-suffix")]


@pytest.fixture(scope="module")
def paligemma():
    pytest.importorskip("transformers.models.paligemma")
    from tokred.testing.sweep import build_family

    model, make, _ = build_family("paligemma")
    return model, make


def _inputs(make, suffix: int) -> dict[str, torch.Tensor]:
    """A left-padded batch of 2 whose last ``suffix`` tokens are PaliGemma's causal suffix (token type 1)."""
    inputs = make(batch=2)
    types = torch.zeros_like(inputs["input_ids"])
    if suffix:
        types[:, -suffix:] = 1
    return {**inputs, "token_type_ids": types}


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    """Which keys each query may attend to, (B, 1, Q, K) bool, from a bool or additive 4-D mask."""
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def _prefix_lm(valid: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
    """The prefix-LM mask of a sequence, (B, 1, N, N) bool: causal, plus both ways inside the prefix (type 0);
    padding (``valid`` False) is never a key."""
    n = valid.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    prefix = (types == 0)[:, :, None] & (types == 0)[:, None, :]
    return ((causal | prefix) & valid.bool()[:, None, :])[:, None]


def _layer_masks(model, prefill_len: int) -> tuple[dict[int, torch.Tensor], list]:
    """Hooks recording the 4-D mask every decoder layer gets in the prefill (registered after tokred's own)."""
    seen: dict[int, torch.Tensor] = {}

    def grab(i, mod, args, kwargs):
        call = hf.CallArgs(args, kwargs)
        if call.hidden_states.shape[1] > 1 and i not in seen:  # the prefill, not a decode step
            seen[i] = _allowed(call.attention_mask)

    layers = model.get_decoder().layers
    handles = [
        layer.register_forward_pre_hook(lambda m, a, k, i=i: grab(i, m, a, k), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    return seen, handles


def test_adapter_handles_the_prefix(paligemma):
    model, _ = paligemma
    adapter = tokred.pipeline.select_adapter(model)
    assert adapter.name == "paligemma" and adapter.handles_bidirectional
    assert adapter.generated_token_types()["token_type_ids"] == 1  # generated tokens are the causal suffix


@pytest.mark.parametrize("suffix", SUFFIX)
def test_none_is_bitwise_identical_and_remove_restores(paligemma, suffix):
    model, make = paligemma
    inputs = _inputs(make, suffix)
    with torch.no_grad():
        ref = model(**inputs).logits
        ref_gen = model.generate(**inputs, **GEN)
        with tokred.patch(model, "none"):
            out = model(**inputs).logits
            gen = model.generate(**inputs, **GEN)
        after = model(**inputs).logits
    assert torch.equal(out, ref) and torch.equal(gen.sequences, ref_gen.sequences)
    assert torch.equal(after, ref)


@pytest.mark.parametrize("suffix", SUFFIX)
def test_fastv_keeps_the_original_mask_on_the_kept_tokens(paligemma, suffix):
    """After the pruning layer every layer's mask is the original prefix-LM mask restricted to the kept rows and
    columns (kept image tokens and the prompt text both ways, the suffix causal), text is never dropped, and cached
    decode equals the no-cache reference on the kept set."""
    model, make = paligemma
    inputs = _inputs(make, suffix)
    n = inputs["input_ids"].shape[1]
    orig, handles = _layer_masks(model, n)
    with torch.no_grad():
        model(**inputs, use_cache=False)
    for h in handles:
        h.remove()
    assert torch.equal(orig[0], _prefix_lm(inputs["attention_mask"], inputs["token_type_ids"]))
    with tokred.patch(model, "fastv", layer=2, keep_ratio=0.5) as handle:
        seen, handles = _layer_masks(model, n)
        try:
            out = model.generate(**inputs, **GEN)
        finally:
            for h in handles:
                h.remove()
        keeps = handle.stats.kept_indices
        visual = handle.adapter.visual_mask(inputs["input_ids"])
    assert list(keeps) == [2]
    keep = keeps[2]  # (B, K) ascending original positions
    kept = torch.zeros_like(visual).scatter(1, keep, True)
    assert bool(kept[~visual].all()), "a text token was dropped"
    assert keep.shape[1] < n and bool((keep.diff(dim=1) > 0).all())
    for layer in range(2, model.config.text_config.num_hidden_layers):
        restricted = orig[layer].gather(2, keep[:, None, :, None].expand(-1, 1, -1, n))
        restricted = restricted.gather(3, keep[:, None, None, :].expand(-1, 1, keep.shape[1], -1))
        assert torch.equal(seen[layer], restricted), f"layer {layer}"
    kept_types = inputs["token_type_ids"].gather(1, keep)
    kept_valid = inputs["attention_mask"].gather(1, keep)
    assert torch.equal(seen[2], _prefix_lm(kept_valid, kept_types))  # kept image tokens still see each other
    for step, logits in enumerate(out.logits):
        full = extend_prompt(model, inputs, out.sequences[:, n : n + step])
        ref = reference_last_logits(model, full, keeps, n)
        assert (logits - ref).abs().max().item() <= 1e-5, f"step {step}"


@pytest.mark.parametrize("suffix", SUFFIX)
@pytest.mark.parametrize(
    "strategy,options",
    [("pooling", {}), ("random", dict(layer=0, keep_ratio=0.5, seed=1)), ("aim-merge", {})],
    ids=["pooling", "random-layer0", "aim-merge"],
)
def test_prellm_prefix_is_the_surviving_tokens(paligemma, suffix, strategy, options):
    """A pre-LLM reduction gives the LM fewer image tokens with ``token_type_ids`` shortened alike: the prefix-LM
    mask the model builds covers exactly the survivors and the prompt text, the suffix stays causal, and cached
    generation equals a no-cache forward of prompt + generated tokens."""
    model, make = paligemma
    inputs = _inputs(make, suffix)
    n = inputs["input_ids"].shape[1]
    image_id = model.config.image_token_id
    shortened: dict[str, torch.Tensor] = {}

    def grab(mod, args, kwargs):  # runs after tokred's own pre-hook: the kwargs the base model really gets
        if "input_ids" not in shortened and kwargs.get("input_ids") is not None:
            shortened.update({k: kwargs[k] for k in ("input_ids", "attention_mask", "token_type_ids")})

    with tokred.patch(model, strategy, **options) as handle:
        hook = handle.adapter.base.register_forward_pre_hook(grab, with_kwargs=True)
        seen, handles = _layer_masks(model, n)
        try:
            out = model.generate(**inputs, **GEN)
            for step, logits in enumerate(out.logits):
                full = extend_prompt(model, inputs, out.sequences[:, n : n + step])
                with torch.no_grad():
                    ref = model(**full, use_cache=False).logits[:, -1]
                assert (logits - ref).abs().max().item() <= 1e-5, f"step {step}"
        finally:
            hook.remove()
            for h in handles:
                h.remove()
    ids, valid, types = shortened["input_ids"], shortened["attention_mask"], shortened["token_type_ids"]
    assert ids.shape[1] < n and ids.shape == types.shape == valid.shape
    before = (inputs["input_ids"] == image_id).sum(1)
    assert bool(((ids == image_id).sum(1) < before).all()), "the LM must see fewer image tokens"
    text = [row[m.bool() & (row != image_id)] for row, m in zip(ids, valid)]
    orig = [row[m.bool() & (row != image_id)] for row, m in zip(inputs["input_ids"], inputs["attention_mask"])]
    assert all(torch.equal(a, b) for a, b in zip(text, orig)), "text must pass unchanged"
    want = torch.zeros_like(types)
    if suffix:
        want[:, -suffix:] = 1
    assert torch.equal(types * valid, want), "prefix 0 on the survivors and the prompt text, suffix 1"
    rows = valid.bool()[:, None, :, None]  # padded queries attend to nothing real: compare real rows only
    assert torch.equal(seen[0] & rows, _prefix_lm(valid, types) & rows)
