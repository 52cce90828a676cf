"""``tokred compare``: budget-matched, side-by-side evaluation of strategies against the unreduced model."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from tokred.cli._options import parse_options
from tokred.cli._output import print_json, stderr, stdout
from tokred.errors import ConfigError


class CompareFormat(str, Enum):
    """Output formats of ``tokred compare``."""

    table = "table"
    json = "json"
    csv = "csv"


def parse_strategies(values: list[str]) -> list[str]:
    """``--strategies aim,fastv`` or repeated flags, de-duplicated in order."""
    names: list[str] = []
    for value in values:
        for name in value.replace(" ", ",").split(","):
            if name and name not in names:
                names.append(name)
    if not names:
        raise ConfigError("--strategies needs at least one name (see `tokred list strategies`)")
    return names


def parse_match(value: str | None) -> tuple[Literal["flops", "tokens"], float] | None:
    """``flops=0.25`` (relative prefill FLOPs) or ``tokens=64`` (mean visual tokens per decoder layer)."""
    if value is None:
        return None
    kind, _, number = value.partition("=")
    if kind not in ("flops", "tokens") or not number:
        raise ConfigError(f"--match '{value}': use flops=FRACTION (e.g. flops=0.25) or tokens=N (e.g. tokens=64)")
    try:
        target = float(number)
    except ValueError:
        raise ConfigError(f"--match '{value}': '{number}' is not a number") from None
    if not math.isfinite(target):
        raise ConfigError(f"--match '{value}': the target must be a finite number")
    if kind == "flops" and not 0 < target <= 1:
        raise ConfigError(f"--match flops={number}: the relative FLOPs budget must be in (0, 1]")
    if kind == "tokens" and target <= 0:
        raise ConfigError(f"--match tokens={number}: the token budget must be positive")
    return ("flops" if kind == "flops" else "tokens"), target


def _progress_enabled(fmt: CompareFormat) -> bool:
    from tokred._env import env_flag

    disabled = env_flag("TOKRED_DISABLE_PROGRESS_BARS")
    return fmt is CompareFormat.table and sys.stderr.isatty() and not disabled


def compare_command(
    strategies: Annotated[
        list[str], typer.Option("--strategies", "-s", help="Strategies, e.g. aim,fastv (the baseline is added).")
    ] = ["aim,fastv"],  # noqa: B006 - typer needs a literal default
    model: Annotated[str | None, typer.Option(help="Model path or hub id; default: built-in reference model.")] = None,
    dataset: Annotated[str, typer.Option(help="'shapes', 'shapes-video' (built-in) or a JSONL file.")] = "shapes",
    split: Annotated[str, typer.Option(help="Split of the built-in benchmark.")] = "test",
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N samples.")] = 300,
    batch_size: Annotated[int, typer.Option(help="Samples per generate() call.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="Strategy option, e.g. -o fastv.keep_ratio=0.25.")
    ] = None,
    match: Annotated[
        str | None, typer.Option(help="Match budgets: flops=0.25 (relative prefill FLOPs) or tokens=64.")
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(metavar="<path>", help="Folder for samples.jsonl (resumable), summaries, plots."),
    ] = None,
    fmt: Annotated[CompareFormat, typer.Option("--format", help="table, json or csv on stdout.")] = (
        CompareFormat.table
    ),
    plot: Annotated[
        bool, typer.Option("--plot", help="Write pareto.png (into --output, or ./tokred-compare).")
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Greedy tokens per answer.")] = 4,
    timing_repeats: Annotated[int, typer.Option(help="Timed rounds of the latency measurement.")] = 5,
) -> None:
    """Compare strategies with the unreduced model: accuracy (95 % bootstrap CI), agreement and McNemar p against
    the baseline, prefill FLOPs, prefill and decode latency, KV-cache bytes and visual tokens.

    Without --model and --dataset it runs the built-in reference model on the built-in shapes benchmark.
    Per-sample results are appended to OUTPUT/samples.jsonl as they complete; rerun with the same --output to
    resume. Results go to stdout, progress to stderr.

    Examples:

    \b
    tokred compare --strategies aim,fastv
    tokred compare -s fastv -s random --match flops=0.25 --output runs/quarter --plot
    tokred compare -s fastv -o fastv.keep_ratio=0.25 --limit 50 --format json
    tokred compare --model llava-hf/llava-1.5-7b-hf --dataset my.jsonl -s aim
    """
    from tokred.compare import run_compare

    names = parse_strategies(strategies)
    if output is None and plot:
        output = "tokred-compare"
    if output is not None:
        from tokred.eval.samplelog import check_output_folder

        check_output_folder(output)
    settings = settings_from_flags(
        model=model,
        dataset=dataset,
        split=split,
        limit=limit,
        batch_size=batch_size,
        seed=seed,
        strategies=names,
        options=parse_options(option, names),
        match=parse_match(match),
        max_new_tokens=max_new_tokens,
        timing_repeats=timing_repeats,
        output=Path(output).expanduser() if output is not None else None,
        plot=plot,
    )
    with _progress(fmt) as progress:
        result = run_compare(settings, progress=progress)
    for err in result.info.get("dataset_errors", []):
        stderr().print(f"warning: skipped {err}", markup=False)
    _write_outputs(result, plot)
    _emit(result, fmt)


def settings_from_flags(**flags: Any) -> Any:
    """``CompareSettings`` from the flags; an out-of-range value is one ``ConfigError`` naming the flag and its bounds.

    Raises:
        ConfigError: For the first invalid flag.
    """
    from pydantic import ValidationError

    from tokred.compare import CompareSettings

    try:
        return CompareSettings(**flags)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            field = str(e["loc"][0]) if e["loc"] else "settings"
            flag = "--" + field.replace("_", "-")
            value = flags.get(field, e.get("input"))
            problems.append(f"{flag} {value}: {_bounds_text(e, field)}")
        raise ConfigError("; ".join(problems)) from None


def _bounds_text(error: Any, field: str) -> str:
    from tokred._config import _bounds
    from tokred.compare import CompareSettings

    info = CompareSettings.model_fields.get(field)
    bounds = _bounds(info.metadata) if info is not None else ""
    if bounds and error.get("type", "").endswith(("than", "equal")):
        return f"out of range, need {bounds.replace('x', field.replace('_', '-'))}"
    return str(error.get("msg", "invalid value")).removeprefix("Value error, ")


class _progress:
    """A rich progress bar on stderr (a no-op callback when disabled)."""

    def __init__(self, fmt: CompareFormat) -> None:
        self.enabled = _progress_enabled(fmt)
        self.bar: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=stderr(),
        )
        self.bar.start()
        return self.update

    def update(self, label: str, done: int, total: int) -> None:
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(label, total=total)
        self.bar.update(self.tasks[label], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


COLUMNS = (
    ("strategy", "strategy", "{}"),
    ("knob", "knob_value", "{:.3g}"),
    ("accuracy % [95% CI]", None, ""),
    ("agree %", "agreement", "{:.1%}"),
    ("McNemar p", "mcnemar_p", "{:.3g}"),
    ("rel. FLOPs", "relative_flops", "{:.3f}"),
    ("prefill GFLOPs", "prefill_flops", "{:.1f}"),
    ("prefill ms", "prefill_latency_s", "{:.1f}"),
    ("decode ms/tok", "decode_latency_s", "{:.1f}"),
    ("KV MiB", "kv_cache_bytes", "{:.2f}"),
    ("visual->LLM", "visual_into_llm", "{:.1f}"),
    ("tok/layer", "mean_tokens_per_layer", "{:.1f}"),
)
_SCALE = {"prefill_flops": 1e-9, "prefill_latency_s": 1e3, "decode_latency_s": 1e3, "kv_cache_bytes": 2**-20}


def _cell(row: dict[str, Any], key: str | None, fmt: str) -> str:
    if key is None:
        acc, lo, hi = row["accuracy"] * 100, row["accuracy_ci_low"] * 100, row["accuracy_ci_high"] * 100
        return f"{acc:.1f} [{lo:.1f}, {hi:.1f}]"
    value = row.get(key)
    if value is None:
        return "-"
    if key in _SCALE:
        value = value * _SCALE[key]
    return fmt.format(value)


def _emit(result: Any, fmt: CompareFormat) -> None:
    if fmt is CompareFormat.json:
        print_json(_json(result))
        return
    if fmt is CompareFormat.csv:
        sys.stdout.write(_csv(result.rows))
        return
    title = f"tokred compare: {result.info['model']}, {result.info['samples']} samples"
    table = Table(title=title, title_justify="left")
    for title, _, _ in COLUMNS:
        table.add_column(title, justify="left" if title == "strategy" else "right")
    for row in result.rows:
        table.add_row(*(_cell(row, key, f) for _, key, f in COLUMNS))
    stdout().print(table)


def _json(result: Any) -> dict[str, Any]:
    return {"settings": result.settings.model_dump(mode="json"), "info": result.info, "rows": result.rows}


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    flat = [{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()} for row in rows]
    writer = csv.DictWriter(buf, fieldnames=list(flat[0]) if flat else [])
    writer.writeheader()
    writer.writerows(flat)
    return buf.getvalue()


def _write_outputs(result: Any, plot: bool) -> None:
    folder = result.settings.output
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / "summary.json", json.dumps(_json(result), indent=2, default=str) + "\n")
    _write_atomic(folder / "summary.csv", _csv(result.rows))
    if plot:
        from tokred.plots import pareto_plot

        path = pareto_plot(result.rows, folder / "pareto.png", title=f"tokred compare: {result.info['model']}")
        stderr().print(f"wrote {path}")


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old or the new file.

    Raises:
        OutputError: If the disk is full or the folder cannot be written (the old file is left as it was).
    """
    from tokred.errors import OutputError

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(
            f"cannot write {path}: {err.strerror or err}; the per-sample records are kept, free space and rerun the "
            "same command (it resumes)"
        ) from None
