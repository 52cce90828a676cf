"""Prefill benchmark of tokred's in-LLM dropping (see tokred.pipeline.benchmark); prints a JSON report.

Usage: .venv/bin/python scripts/bench_pipeline.py [--repeats 5] [--threads 2] [--layers 8] [--hidden 2048]
"""

from __future__ import annotations

import argparse
import json

from tokred.pipeline.benchmark import pipeline_benchmark


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--keep-ratio", type=float, default=0.5)
    p.add_argument("--layer", type=int, default=2)
    a = p.parse_args()
    report = pipeline_benchmark(
        hidden_size=a.hidden,
        num_layers=a.layers,
        keep_ratio=a.keep_ratio,
        layer=a.layer,
        repeats=a.repeats,
        warmup=a.warmup,
        threads=a.threads,
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
