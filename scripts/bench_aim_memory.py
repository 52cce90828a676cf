"""Extra peak memory of AIM's PageRank score at N tokens and H heads (default: N = 6,400, 28 heads, 4 KV heads).

Measures the growth of peak resident memory (VmHWM, reset before the call) while `pagerank_importance` runs on
random queries and keys that already exist, i.e. the memory the score itself needs. The reference code
materialises H x N x N float32 logits plus a clone (about 4.5 GB at this size, twice that with the clone).

Usage: python scripts/bench_aim_memory.py [--tokens 6400] [--heads 28] [--kv-heads 4] [--head-dim 128]
"""

from __future__ import annotations

import argparse
import time

import torch

from tokred.bench import peak_memory
from tokred.ops.attention import pagerank_importance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=6400)
    parser.add_argument("--heads", type=int, default=28)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=64)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, args.heads, args.tokens, args.head_dim, generator=g)
    k = torch.randn(1, args.kv_heads, args.tokens, args.head_dim, generator=g)
    start = time.perf_counter()
    with peak_memory("cpu") as mem:
        scores = pagerank_importance(q, k, scaling=args.head_dim**-0.5, chunk_size=args.chunk_size)
    elapsed = time.perf_counter() - start
    dense = args.heads * args.tokens**2 * 4
    print(f"N={args.tokens} H={args.heads} H_kv={args.kv_heads} D={args.head_dim} chunk={args.chunk_size}")
    print(f"extra peak memory of the score: {mem.delta_bytes / 2**20:.1f} MiB ({mem.method}, exact={mem.exact})")
    print(f"dense H x N x N float32 logits (reference code, before its clone): {dense / 2**20:.1f} MiB")
    print(f"time: {elapsed:.2f} s; scores shape {tuple(scores.shape)}")


if __name__ == "__main__":
    main()
