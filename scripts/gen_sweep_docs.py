"""Generate the "Accuracy against budget" results page snippet from a committed ``tokred compare`` sweep.

The source is ``docs/results/sweep/``: ``summary.json`` (what ``tokred compare --output`` writes), ``pareto.png`` and
``kept.png`` (``--plot``), and ``RUN.json`` (the exact command, its environment and its wall time). This script
renders ``docs/_results/sweep.md`` (the table of every (strategy, budget) point and the paired tests) from them;
nothing is typed by hand.

    python scripts/gen_sweep_docs.py            # check (default): exit 1 when the snippet drifted
    python scripts/gen_sweep_docs.py --update   # rewrite the snippet
    python scripts/gen_sweep_docs.py --run      # rerun the sweep (tens of minutes on 2 CPU cores), copy its
                                                # outputs into docs/results/sweep/, then rewrite the snippet
    python scripts/gen_sweep_docs.py --collect WALL_S   # the same for a run of COMMAND started by hand
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "docs" / "results" / "sweep"
OUT = ROOT / "docs" / "_results" / "sweep.md"
RUN_FOLDER = ROOT / "runs" / "docs-sweep"
COMMAND = [
    "tokred", "compare", "-s", "aim,fastv,random,pooling", "--match", "flops=0.15,0.25,0.4", "--plot",
    "--output", "runs/docs-sweep", "--limit", "80", "--timing-repeats", "3", "--format", "json",
]  # fmt: skip


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def point_line(row: dict[str, Any], labels: dict[str, str]) -> str:
    """One markdown row of a summary row."""
    acc = f"{row['accuracy'] * 100:.1f} [{row['accuracy_ci_low'] * 100:.1f}, {row['accuracy_ci_high'] * 100:.1f}]"
    target = "-" if row.get("budget_target") is None else f"{row['budget_target']:g}"
    knob = "-" if row.get("knob_value") is None else f"`{row['budget_knob']}={row['knob_value']:.3g}`"
    off = not row.get("on_target", True)
    same = "off target" if off else ", ".join(f"`{labels[i]}`" for i in row.get("indistinguishable_from", [])) or "-"
    flops = f"{row['relative_flops']:.3f}" + (" \\*" if off else "")
    return (
        f"| `{row['strategy']}` | {target} | {knob} | {acc} | {row['mcnemar_p']:.3g} | {same} | {flops} | "
        f"{row['prefill_latency_s'] * 1e3:.0f} | {row['decode_latency_s'] * 1e3:.1f} | "
        f"{row['throughput_samples_per_s']:.2f} | {row['kv_cache_bytes'] / 2**20:.2f} | "
        f"{_mib(row.get('peak_memory_bytes'))} |\n"
    )


POINTS_HEADER = (
    "| strategy | target rel. FLOPs | knob | accuracy % [95 % CI] | McNemar p vs `none` | indistinguishable from "
    "(Holm) | measured rel. FLOPs | prefill ms | decode ms/token | samples/s | KV-cache MiB | peak MiB |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)
PAIRS_HEADER = (
    "| budget | A | B | samples | only A right | only B right | exact McNemar p | Holm p | verdict |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)


def pair_line(pair: dict[str, Any], labels: dict[str, str]) -> str:
    """One markdown row of a paired test."""
    verdict = "indistinguishable" if pair["indistinguishable"] else "different"
    return (
        f"| {pair['budget']:g} | `{labels[pair['a']]}` | `{labels[pair['b']]}` | {pair['n']} | {pair['only_a']} | "
        f"{pair['only_b']} | {pair['p']:.3g} | {pair['p_holm']:.3g} | {verdict} |\n"
    )


def provenance(run: dict[str, Any], info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Where the numbers come from and how long they took."""
    batch = next(r["throughput_batch_size"] for r in rows if r.get("throughput_batch_size"))
    methods = sorted({r["peak_memory_method"] for r in rows})
    return (
        f"Measured with `{run['env']} {run['command']}` on {info['model']}, the first {info['samples']} questions of "
        f"the `shapes` test split. Wall time {run['wall_s'] / 60:.1f} min on {run['machine']}; the sample count is "
        "kept modest so that the run finishes in that time, so the intervals are wide. Latencies are medians of "
        f"interleaved runs at batch size 1, throughput is answer generation at batch size {batch}; both are only "
        "comparable within the table. Peak memory: tensor bytes of a batch-1 prefill above its start "
        f"({'; '.join(methods)}).\n"
    )


def render() -> str:
    """The snippet's content."""
    data = json.loads((SOURCE / "summary.json").read_text())
    run = json.loads((SOURCE / "RUN.json").read_text())
    rows, info = data["rows"], data["info"]
    labels = {r["id"]: r["strategy"] for r in rows}
    text = provenance(run, info, rows) + "\n" + POINTS_HEADER + "".join(point_line(r, labels) for r in rows)
    if any(not r.get("on_target", True) for r in rows):
        text += (
            "\n\\* off target: the strategy's knob cannot reach the target within 2 %, so the point was evaluated at "
            "the nearest budget it reaches (the measured column) and left out of the paired tests at that budget:\n\n"
            + "".join(f"- {note}\n" for note in info.get("off_target", []))
        )
    text += f"\nPaired tests: {info['paired_tests']}.\n\n" + PAIRS_HEADER
    return text + "".join(pair_line(p, labels) for p in info["pairwise"])


def run_sweep() -> None:
    """Run the sweep from scratch, timed, and copy its outputs into ``docs/results/sweep``."""
    shutil.rmtree(RUN_FOLDER, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    with (ROOT / "runs" / "docs-sweep.json").open("w") as out:
        subprocess.run(COMMAND, cwd=ROOT, env=env, check=True, stdout=out)
    collect(time.monotonic() - start)


def collect(wall: float) -> None:
    """Copy a finished run's outputs from ``runs/docs-sweep`` into ``docs/results/sweep`` with its wall time."""
    SOURCE.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "pareto.png", "kept.png"):
        shutil.copyfile(RUN_FOLDER / name, SOURCE / name)
    record = {"command": shlex.join(COMMAND), "env": "OMP_NUM_THREADS=1", "wall_s": round(wall, 1),
              "machine": "a 2-core CPU shared with other jobs"}  # fmt: skip
    (SOURCE / "RUN.json").write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="rewrite the snippet")
    parser.add_argument("--run", action="store_true", help="rerun the sweep first (slow), then rewrite the snippet")
    parser.add_argument("--collect", type=float, metavar="WALL_S", help="copy a run of COMMAND made by hand (its wall "
                        "time in seconds) from runs/docs-sweep, then rewrite the snippet")  # fmt: skip
    args = parser.parse_args(argv)
    if args.run:
        run_sweep()
    elif args.collect is not None:
        collect(args.collect)
    text = render()
    if args.update or args.run or args.collect is not None:
        OUT.write_text(text)
        print(f"wrote {OUT.relative_to(ROOT)}")
        return 0
    if not OUT.exists() or OUT.read_text() != text:
        print(f"drift: {OUT.relative_to(ROOT)} (run python scripts/gen_sweep_docs.py --update)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
