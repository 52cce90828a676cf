"""PrefixKV on the reference model: KV-cache bytes per layer after the prefill, and decode speed, against no reduction.

Calibrates (or reuses the cached) PrefixKV recipe at ``--retention``, then on ``--samples`` test questions of the
built-in benchmark measures, for the unpatched model and for prefixkv, the KV-cache bytes of every layer right after
the prefill (read from the cache object) and the time of ``--new-tokens`` greedy decode steps (the prefill is timed
separately and subtracted; the variants are interleaved, median of ``--repeats`` rounds). Prints one JSON object.

Usage:
    OMP_NUM_THREADS=1 python scripts/bench_prefixkv.py --retention 0.5 --samples 8 --repeats 5 --new-tokens 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

import tokred
from tokred.adapters import hf


def _cache_bytes(cache: Any) -> list[int]:
    out = []
    for layer in hf.cache_layers(cache):
        out.append(sum(t.numel() * t.element_size() for t in hf.cache_layer_tensors(layer) if torch.is_tensor(t)))
    return out


@torch.no_grad()
def _prefill_bytes(model: Any, inputs: dict[str, torch.Tensor]) -> list[int]:
    return _cache_bytes(hf.output_cache(model(**inputs, use_cache=True)))


@torch.no_grad()
def _decode_seconds(model: Any, inputs: dict[str, torch.Tensor], new_tokens: int) -> float:
    """Seconds of ``new_tokens - 1`` decode steps: generate(new_tokens) minus generate(1) (the prefill)."""
    t0 = time.perf_counter()
    model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=False)
    t1 = time.perf_counter()
    model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    t2 = time.perf_counter()
    return (t2 - t1) - (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retention", type=float, default=0.5)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    from tokred.eval.datasets import load_dataset
    from tokred.eval.reference import load_reference_model
    from tokred.eval.runner import HFRunner

    model, processor = load_reference_model()
    runner = HFRunner(model, processor, name="reference")
    strategy = tokred.create_strategy("prefixkv", retention=args.retention, samples=args.calibration_samples)
    strategy.prepare(model)  # calibrate once (cached) before timing
    inputs = [runner.encode([s]) for s in load_dataset("shapes", split="test", limit=args.samples)]
    base_bytes = [_prefill_bytes(model, x) for x in inputs]
    with tokred.patch(model, strategy):
        kv_bytes = [_prefill_bytes(model, x) for x in inputs]
    times: dict[str, list[float]] = {"none": [], "prefixkv": []}
    for _ in range(args.repeats):  # interleaved rounds
        for x in inputs:
            times["none"].append(_decode_seconds(model, x, args.new_tokens))
            with tokred.patch(model, strategy):
                times["prefixkv"].append(_decode_seconds(model, x, args.new_tokens))
    steps = args.new_tokens - 1
    layers = len(base_bytes[0])
    mean = [sum(b[i] for b in kv_bytes) / len(kv_bytes) for i in range(layers)]
    base = [sum(b[i] for b in base_bytes) / len(base_bytes) for i in range(layers)]
    ms = {k: 1000 * statistics.median(v) / steps for k, v in times.items()}
    print(
        json.dumps(
            {
                "retention": args.retention,
                "recipe_per_layer": strategy.kv_compressor.ratios,
                "kv_bytes_per_layer_none": base,
                "kv_bytes_per_layer_prefixkv": mean,
                "kv_bytes_total_ratio": sum(mean) / sum(base),
                "decode_ms_per_token": ms,
                "decode_speedup": ms["none"] / ms["prefixkv"],
                "samples": args.samples,
                "repeats": args.repeats,
                "new_tokens": args.new_tokens,
                "threads": torch.get_num_threads(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
