"""AIM PageRank's share of prefill in `tokred bench`: this tree's implementation against an older commit's, in one run.

Runs `tokred.pipeline_bench.pipeline_benchmark` (the model of ``tokred bench``: hidden 2048, 8 layers, 576 visual +
64 text tokens) with two variants interleaved: ``aim-prune`` as it is, and ``aim-prune`` whose scorer calls the
``pagerank_importance`` of ``--old`` (read with ``git show``; its own default chunk size). Prints the medians and each
variant's scorer share (the bench's ``component_share``). A benchmark, not a test: on a shared machine, repeat it.

Usage: OMP_NUM_THREADS=1 python scripts/bench_aim_pagerank.py [--old 43a75c7~1] [--repeats 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import types
from pathlib import Path
from typing import Any

import tokred
from tokred.pipeline_bench import pipeline_benchmark


def _old_module(commit: str) -> Any:
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{commit}:tokred/ops/attention.py"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType(f"attention_{commit}")
    exec(compile(source, f"{commit}:tokred/ops/attention.py", "exec"), module.__dict__)
    return module


def _old_strategy(old: Any) -> Any:
    strategy = tokred.create_strategy("aim-prune")
    base = type(strategy.scorer)

    class OldScorer(base):  # type: ignore[misc, valid-type]
        def score(self, ctx: Any) -> Any:
            return old.pagerank_importance(
                ctx.query,
                ctx.key,
                scaling=ctx.scaling,
                key_mask=ctx.attention_mask if ctx.key_mask is None else ctx.key_mask,
                query_mask=ctx.attention_mask,
                temperature=self.config.temperature,
                iterations=self.config.iterations,
            )

    strategy.scorer = OldScorer()
    return strategy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="43a75c7~1", help="Commit whose PageRank is the 'before'.")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    variants = {
        "aim-prune": {"name": "aim-prune"},
        f"aim-prune@{args.old}": {"name": _old_strategy(_old_module(args.old))},
    }
    report = pipeline_benchmark(repeats=args.repeats, warmup=1, threads=args.threads, strategies=variants)
    out = {
        "median_s": report["median_s"],
        "scorer_share": {k: v["component_share"] for k, v in report["strategies"].items()},
        "tokens_per_layer": {k: report["tokens_per_layer"][k] for k in variants},
        "threads": report["threads"],
        "repeats": report["repeats"],
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
