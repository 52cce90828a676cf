"""Generate the "Results on the reference model" tables of the strategy pages from a committed compare run.

The source is ``docs/results/reference-compare.json``: the ``--format json`` output of one ``tokred compare`` run on
the built-in reference model and ``shapes`` benchmark (the exact command is stored next to it in
``docs/results/COMMAND``). For every strategy this writes ``docs/_results/<name>.md`` (its row next to the unreduced
baseline) and ``docs/_results/all.md`` (every row). Nothing is typed by hand.

    python scripts/gen_results_docs.py            # check (default): exit 1 and show what drifted
    python scripts/gen_results_docs.py --update   # rewrite the snippets
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "docs" / "results" / "reference-compare.json"
COMMAND = ROOT / "docs" / "results" / "COMMAND"
OUT = ROOT / "docs" / "_results"
STRATEGIES = (
    "aim",
    "aim-merge",
    "aim-prune",
    "fastv",
    "tome",
    "random",
    "pooling",
    "divprune",
    "cdpruner",
    "dart",
    "pyramiddrop",
    "evs",
    "vidcom2",
    "vtc-cls",
    "visionzip",
    "vispruner",
    "fitprune",
    "prefixkv",
    "gamma-mod",
    "none",
)

#: Further committed runs (``docs/results/<name>.json`` with its command in ``<name>.COMMAND``): each is rendered
#: whole into ``docs/_results/<name>.md``, and a strategy missing from the main run takes its rows from the first of
#: them that has it.
EXTRA_RUNS: tuple[str, ...] = (
    "tower-flops25",
    "seed-flops50",
    "seed-prefixkv",
    "breadth-flops25",
    "gamma-mod-flops60",
    "video-flops25",
)

HEADER = (
    "| strategy | accuracy % [95 % CI] | agreement | McNemar p | rel. prefill FLOPs | prefill ms | decode ms/token "
    "| KV-cache MiB | visual tokens into LLM | mean tokens/layer |\n"
    "|---|---|---|---|---|---|---|---|---|---|\n"
)


def row_line(row: dict[str, Any]) -> str:
    """One markdown table row of a compare summary row."""
    acc = f"{row['accuracy'] * 100:.1f} [{row['accuracy_ci_low'] * 100:.1f}, {row['accuracy_ci_high'] * 100:.1f}]"
    return (
        f"| `{row['strategy']}` | {acc} | {row['agreement'] * 100:.1f} % | {row['mcnemar_p']:.3g} | "
        f"{row['relative_flops']:.3f} | {row['prefill_latency_s'] * 1e3:.0f} | {row['decode_latency_s'] * 1e3:.1f} | "
        f"{row['kv_cache_bytes'] / 2**20:.2f} | {row['visual_into_llm']:.1f} | {row['mean_tokens_per_layer']:.1f} |\n"
    )


def by_type(row: dict[str, Any]) -> str:
    """Per-question-type accuracy as one line."""
    parts = [f"{k} {v * 100:.1f} %" for k, v in row["accuracy_by_type"].items()]
    return "Accuracy by question type: " + ", ".join(parts) + ".\n"


def provenance(data: dict[str, Any], command_file: Path = COMMAND) -> str:
    """Where the numbers come from."""
    command = command_file.read_text().strip() if command_file.exists() else "tokred compare"
    info, settings = data["info"], data.get("settings", {})
    dataset = settings.get("dataset") or "shapes"
    frames = f", {settings['frames']}-frame clips" if settings.get("frames") else ""
    return (
        f"Measured with `{command}` on {info['model']}, {info['samples']} questions of the `{dataset}` test split"
        f"{frames} "
        "(CPU, 2 cores; latencies are medians of interleaved runs on one sample and only comparable within the table)."
        "\n"
    )


def render() -> dict[Path, str]:
    """Every snippet file and its content."""
    data = json.loads(SOURCE.read_text())
    rows = {r["strategy"]: r for r in data["rows"]}
    files = {}
    note = provenance(data)
    extras = []
    for run in EXTRA_RUNS:
        extra = json.loads((SOURCE.parent / f"{run}.json").read_text())
        extras.append((provenance(extra, SOURCE.parent / f"{run}.COMMAND"), {r["strategy"]: r for r in extra["rows"]}))
        files[OUT / f"{run}.md"] = extras[-1][0] + "\n" + HEADER + "".join(row_line(r) for r in extra["rows"])
    for name in STRATEGIES:
        source, found = next(((n, r) for n, r in [(note, rows), *extras] if name in r), (note, rows))
        if name not in found:
            body = f"`{name}` was not part of the committed reference run.\n"
        else:
            chosen = [found["none"]] + ([found[name]] if name != "none" else [])
            body = source + "\n" + HEADER + "".join(row_line(r) for r in chosen) + "\n" + by_type(found[name])
            options = found[name].get("options") or {}
            if options:
                body += "\nOptions: " + ", ".join(f"`{k}={v!r}`" for k, v in options.items()) + ".\n"
        files[OUT / f"{name}.md"] = body
    files[OUT / "all.md"] = note + "\n" + HEADER + "".join(row_line(r) for r in data["rows"])
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="rewrite the snippets")
    args = parser.parse_args(argv)
    files = render()
    drifted = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    if args.update:
        OUT.mkdir(parents=True, exist_ok=True)
        for path in drifted:
            path.write_text(files[path])
        print(f"wrote {len(drifted)} files under {OUT.relative_to(ROOT)}")
        return 0
    for path in drifted:
        print(f"drift: {path.relative_to(ROOT)} (run python scripts/gen_results_docs.py --update)")
    return 1 if drifted else 0


if __name__ == "__main__":
    sys.exit(main())
