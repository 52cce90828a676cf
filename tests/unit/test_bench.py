"""Latency and memory utilities: interleaving, statistics, KV-cache size on a real cache, peak memory."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tokred import bench
from tokred.adapters import hf
from tokred.bench import TimingStats, kv_cache_bytes, kv_cache_lengths, peak_memory, time_interleaved
from tokred.flops import decode_step_flops

BATCH, SEQ, LAYERS, KV_HEADS, HEAD_DIM = 2, 7, 2, 2, 8


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=KV_HEADS,
        num_hidden_layers=LAYERS,
        vocab_size=100,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def prefill(model):
    ids = torch.randint(0, 100, (BATCH, SEQ))
    with torch.no_grad():
        return model(input_ids=ids, use_cache=True)


# ---------------------------------------------------------------------------------------------------------------
# timing


def test_interleaving_order_rotates_round_robin():
    log: list[str] = []
    fns = {name: (lambda name=name: log.append(name)) for name in "abc"}
    result = time_interleaved(fns, warmup=1, repeats=3)
    assert "".join(log) == "abc" + "abc" + "bca" + "cab"  # warm-up round, then timed rounds 0, 1, 2
    assert list(result) == ["a", "b", "c"] and all(s.n == 3 for s in result.values())
    log.clear()
    time_interleaved(fns, warmup=0, repeats=2, rotate=False)
    assert "".join(log) == "abcabc"


def test_timings_separate_slow_from_fast_and_call_sync():
    synced: list[int] = []
    result = time_interleaved(
        {"slow": lambda: time.sleep(0.005), "fast": lambda: None}, warmup=1, repeats=4, sync=lambda: synced.append(1)
    )
    assert len(synced) == 2 * (1 + 4)
    assert result["slow"].min >= 0.005
    assert result["fast"].median < result["slow"].median


def test_cpu_outputs_use_perf_counter(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("CUDA events used for CPU work")

    monkeypatch.setattr(bench, "_time_cuda", no_cuda)
    result = time_interleaved({"matmul": lambda: {"out": [torch.ones(4, 4) @ torch.ones(4, 4)]}}, warmup=1, repeats=2)
    assert result["matmul"].n == 2
    assert not bench._contains_cuda_tensor({"a": (torch.ones(1),)})


def test_invalid_arguments():
    with pytest.raises(ValueError):
        time_interleaved({})
    with pytest.raises(ValueError):
        time_interleaved({"a": lambda: None}, repeats=0)
    with pytest.raises(ValueError):
        TimingStats.from_samples([])


def test_timing_stats_match_numpy():
    samples = [0.5, 0.1, 0.4, 0.2, 0.3, 0.9, 0.25]
    stats = TimingStats.from_samples(samples)
    assert stats.median == pytest.approx(np.median(samples))
    assert stats.p25 == pytest.approx(np.percentile(samples, 25))
    assert stats.p75 == pytest.approx(np.percentile(samples, 75))
    assert (stats.min, stats.max, stats.n) == (0.1, 0.9, 7)
    assert stats.mean == pytest.approx(np.mean(samples))
    assert stats.samples == tuple(samples)  # run order kept
    assert stats.iqr == pytest.approx(stats.p75 - stats.p25)
    assert stats.to_dict()["samples"] == samples
    single = TimingStats.from_samples([0.2])
    assert single.p25 == single.median == single.p75 == 0.2


# ---------------------------------------------------------------------------------------------------------------
# KV cache


def test_kv_cache_bytes_on_real_dynamic_cache(tiny_llama):
    from transformers import DynamicCache

    out = prefill(tiny_llama)
    cache = hf.output_cache(out)
    assert isinstance(cache, DynamicCache)
    per_tensor = BATCH * KV_HEADS * SEQ * HEAD_DIM * 4  # float32
    assert kv_cache_bytes(cache) == LAYERS * 2 * per_tensor
    assert kv_cache_lengths(cache) == [SEQ] * LAYERS

    with torch.no_grad():  # one decode step appends one token per layer
        tiny_llama(input_ids=out.logits[:, -1:].argmax(-1), use_cache=True, **{hf.CACHE_KWARG: cache})
    assert kv_cache_lengths(cache) == [SEQ + 1] * LAYERS
    assert kv_cache_bytes(cache) == LAYERS * 2 * BATCH * KV_HEADS * (SEQ + 1) * HEAD_DIM * 4

    # real eviction in one layer (what an in-LLM pruning strategy does): lengths and bytes follow
    layer = cache.layers[1]
    layer.keys, layer.values = layer.keys[:, :, :3], layer.values[:, :, :3]
    assert kv_cache_lengths(cache) == [SEQ + 1, 3]
    assert kv_cache_bytes(cache) == 2 * BATCH * KV_HEADS * (SEQ + 1 + 3) * HEAD_DIM * 4
    assert decode_step_flops(tiny_llama.config, kv_cache_lengths(cache)) > 0


def test_kv_cache_empty_legacy_and_static(tiny_llama):
    from transformers import DynamicCache, StaticCache

    assert kv_cache_bytes(None) == 0 and kv_cache_lengths(None) == []
    empty = DynamicCache(config=tiny_llama.config)
    assert kv_cache_bytes(empty) == 0
    assert kv_cache_lengths(empty) == [0] * LAYERS  # layers exist (from the config) but are uninitialised
    assert kv_cache_lengths(DynamicCache()) == []  # no layers yet

    k = torch.zeros(1, 2, 5, 4, dtype=torch.float16)
    assert kv_cache_bytes(((k, k), (k[:, :, :2], k[:, :, :2]))) == 2 * 2 * 40 + 2 * 2 * 16
    assert kv_cache_lengths(((k, k), (k[:, :, :2], k[:, :, :2]))) == [5, 2]

    static = StaticCache(config=tiny_llama.config, max_cache_len=16)
    ids = torch.randint(0, 100, (1, SEQ))
    with torch.no_grad():
        tiny_llama(input_ids=ids, use_cache=True, **{hf.CACHE_KWARG: static})
    assert kv_cache_lengths(static) == [SEQ] * LAYERS  # filled positions
    assert kv_cache_bytes(static) == LAYERS * 2 * 1 * KV_HEADS * 16 * HEAD_DIM * 4  # the whole buffer is held

    with pytest.raises(TypeError, match="KV cache"):
        kv_cache_bytes(object())


# ---------------------------------------------------------------------------------------------------------------
# peak memory


PEAK_SCRIPT = """
import json, torch
from tokred.bench import peak_memory
mib = 1 << 20
with peak_memory() as outer:
    big = torch.ones(96 * mib // 4)  # 96 MiB, touched
    del big
    with peak_memory("cpu") as inner:
        small = torch.ones(40 * mib // 4)
        del small
print(json.dumps({"outer": outer.to_dict(), "inner": inner.to_dict()}))
"""


def test_peak_memory_cpu_sees_torch_allocations_and_nests():
    # A fresh interpreter: in a long test process, freed heap pages of earlier tests can be reused without the
    # resident size growing, which would make any RSS-based expectation depend on test order.
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    outer, inner = data["outer"], data["inner"]
    mib = 1 << 20
    assert outer["device"] == inner["device"] == "cpu"
    assert inner["delta_bytes"] >= 36 * mib
    assert inner["delta_bytes"] < 80 * mib  # the outer block's freed 96 MiB is not charged to the inner block
    assert outer["delta_bytes"] >= 90 * mib  # the inner block's peak reset did not erase the outer peak
    if outer["exact"]:
        assert "clear_refs" in outer["method"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_paths():
    x = torch.randn(2048, 2048, device="cuda")
    result = time_interleaved({"mm": lambda: x @ x}, warmup=2, repeats=3)
    assert result["mm"].median > 0
    with peak_memory("cuda") as stats:
        y = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
        del y
    assert stats.device.startswith("cuda:") and stats.delta_bytes >= 256 << 20
