"""``tokred report``: tokred's table, paired statistics and plots from the sample logs of lmms-eval runs."""

from __future__ import annotations

import csv
import io
import json
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tokred.cli._output import print_json, stderr, stdout


class ReportFormat(str, Enum):
    """Output formats of ``tokred report``."""

    table = "table"
    json = "json"
    csv = "csv"


COLUMNS = (
    ("strategy", "strategy", "{}"),
    ("n", "n", "{}"),
    ("score % [95% CI]", "accuracy", ""),
    ("agree %", "agreement", "{:.1%}"),
    ("McNemar p", "mcnemar_p", "{:.3g}"),
    ("rel. FLOPs", "relative_flops", "{:.3f}"),
    ("prefill GFLOPs", "prefill_flops", "{:.2f}"),
    ("visual in", "visual_in", "{:.1f}"),
    ("visual->LLM", "visual_into_llm", "{:.1f}"),
    ("tok/layer", "mean_tokens_per_layer", "{:.1f}"),
)


def report_command(
    folders: Annotated[list[str], typer.Argument(help="Output folders of lmms-eval runs (--output_path).")],
    metric: Annotated[
        str | None, typer.Option(help="Per-sample metric to compare (default: the task's first numeric one).")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option(help="Label of the baseline run (default: strategy none, else the first).")
    ] = None,
    fmt: Annotated[ReportFormat, typer.Option("--format", help="table, json or csv on stdout.")] = ReportFormat.table,
    output: Annotated[
        str | None, typer.Option(metavar="<path>", help="Folder for summary.json, summary.csv and plots.")
    ] = None,
    plot: Annotated[bool, typer.Option("--plot", help="Write pareto_<task>.png (into --output, or .).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
) -> None:
    """Compare lmms-eval runs of the tokred backend (one per strategy): score with a 95 % bootstrap CI, agreement
    and exact McNemar p against the baseline on the samples both runs have (matched on doc ids), relative prefill
    FLOPs and visual tokens from the per-sample logs.

    Each FOLDER is searched for *_results.json files with their *_samples_<task>.jsonl (lmms-eval --output_path
    FOLDER --log_samples). Results go to stdout.

    Examples:

    \b
    tokred report runs/none runs/fastv runs/aim
    tokred report runs/* --metric exact_match --format json
    tokred report runs/none runs/fastv --plot --output runs/report
    """
    from tokred.report import load_runs, summarise_runs

    runs = load_runs(folders)
    tables = summarise_runs(runs, metric=metric, baseline=baseline, seed=seed)
    if output is not None or plot:
        _write(tables, Path(output or ".").expanduser(), plot)
    if fmt is ReportFormat.json:
        print_json({"tasks": tables})
    elif fmt is ReportFormat.csv:
        sys.stdout.write(_csv([row for rows in tables.values() for row in rows]))
    else:
        for task, rows in tables.items():
            stdout().print(_table(task, rows))


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    if key == "accuracy":
        acc, lo, hi = row["accuracy"] * 100, row["accuracy_ci_low"] * 100, row["accuracy_ci_high"] * 100
        return f"{acc:.1f} [{lo:.1f}, {hi:.1f}]"
    value = row.get(key)
    if value is None:
        return "-"
    return fmt.format(value * 1e-9 if key == "prefill_flops" else value)


def _table(task: str, rows: list[dict[str, Any]]) -> Table:
    first = rows[0]
    title = f"tokred report: {task} ({first['metric']}), {first['model']}, baseline {first['strategy']}"
    table = Table(title=title, title_justify="left")
    for name, _, _ in COLUMNS:
        table.add_column(name, justify="left" if name == "strategy" else "right")
    for row in rows:
        table.add_row(*(_cell(row, key, f) for _, key, f in COLUMNS))
    unmatched = sum(r["unmatched"] for r in rows)
    if unmatched:
        table.caption = f"{unmatched} samples without a match in the baseline run were left out"
    return table


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    flat = [{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()} for row in rows]
    writer = csv.DictWriter(buf, fieldnames=list(flat[0]) if flat else [])
    writer.writeheader()
    writer.writerows(flat)
    return buf.getvalue()


def _write(tables: dict[str, list[dict[str, Any]]], folder: Path, plot: bool) -> None:
    from tokred.plots import pareto_plot

    folder.mkdir(parents=True, exist_ok=True)
    rows = [row for task_rows in tables.values() for row in task_rows]
    (folder / "summary.json").write_text(json.dumps({"tasks": tables}, indent=2, default=str) + "\n", encoding="utf-8")
    (folder / "summary.csv").write_text(_csv(rows), encoding="utf-8")
    if not plot:
        return
    for task, task_rows in tables.items():
        usable = [dict(r, prefill_latency_s=None) for r in task_rows if r.get("relative_flops") is not None]
        if not usable:
            stderr().print(f"no plot for {task}: its runs carry no tokred reduction statistics", markup=False)
            continue
        with warnings.catch_warnings():  # the latency panel stays empty: lmms-eval logs no per-strategy latency
            warnings.simplefilter("ignore", UserWarning)
            path = pareto_plot(usable, folder / f"pareto_{task}.png", title=f"tokred report: {task}")
        stderr().print(f"wrote {path}", markup=False)
