"""``tokred compare``: budget-matched, side-by-side evaluation of strategies against the unreduced model."""

from __future__ import annotations

import csv
import io
import json
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
    """``--strategies aim,fastv`` or repeated flags, in order; an entry may be a variant ``fastv@keep_ratio=0.25``.

    Commas inside brackets (an option's list value, ``aim@keep_ratios=[0.5,0.25]``) do not split.

    Raises:
        ConfigError: For no name at all, or the same entry twice (two configurations need different options).
    """
    names: list[str] = []
    for value in values:
        for name in _split_top_level(value):
            if name in names:
                raise ConfigError(
                    f"-s {name} is given twice; to compare two configurations of one strategy name them with "
                    "options, e.g. -s fastv@keep_ratio=0.25 -s fastv@keep_ratio=0.5"
                )
            names.append(name)
    if not names:
        raise ConfigError("--strategies needs at least one name (see `tokred list strategies`)")
    return names


def _split_top_level(value: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in value:
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(char, 0)
        if depth == 0 and char in ", ":
            parts.append(current)
            current = ""
        else:
            current += char
    return [p for p in [*parts, current] if p]


def parse_match(value: str | None) -> tuple[Literal["flops", "tokens"], list[float]] | None:
    """``flops=0.25`` (relative prefill FLOPs) or ``tokens=64`` (mean visual tokens per decoder layer); several
    targets, ``flops=0.15,0.25,0.4``, sweep the budget."""
    if value is None:
        return None
    kind, _, numbers = value.partition("=")
    if kind not in ("flops", "tokens") or not numbers:
        raise ConfigError(
            f"--match '{value}': use flops=FRACTION (e.g. flops=0.25), tokens=N (e.g. tokens=64) or a list "
            "(flops=0.15,0.25,0.4)"
        )
    targets = []
    for number in numbers.split(","):
        try:
            targets.append(float(number))
        except ValueError:
            raise ConfigError(f"--match '{value}': '{number}' is not a number") from None
    from tokred.compare import check_targets

    try:
        check_targets(kind, targets)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return ("flops" if kind == "flops" else "tokens"), targets


def parse_batch_sizes(value: str | None) -> list[int]:
    """``1,8,32`` -> ``[1, 8, 32]``.

    Raises:
        ConfigError: For a value that is not a comma-separated list of distinct integers in [1, 512].
    """
    if not value:
        return []
    try:
        sizes = [int(v) for v in value.split(",")]
    except ValueError:
        raise ConfigError(f"--batch-sizes {value}: give integers separated by commas, e.g. 1,8,32") from None
    if any(not 1 <= b <= 512 for b in sizes) or len(set(sizes)) != len(sizes):
        raise ConfigError(f"--batch-sizes {value}: give distinct batch sizes in [1, 512], e.g. 1,8,32")
    return sizes


def _progress_mode(fmt: CompareFormat) -> Literal["bar", "lines", "off"]:
    """A rich bar on a terminal (table output), else plain lines; nothing when progress is disabled."""
    from tokred._env import env_flag

    if env_flag("TOKRED_DISABLE_PROGRESS_BARS"):
        return "off"
    return "bar" if fmt is CompareFormat.table and sys.stderr.isatty() else "lines"


def compare_command(
    strategies: Annotated[
        list[str],
        typer.Option(
            "--strategies",
            "-s",
            help="Strategies, e.g. aim,fastv (the baseline is added); a configured variant is NAME@KEY=VALUE, "
            "e.g. -s fastv@keep_ratio=0.25 -s fastv@keep_ratio=0.5.",
        ),
    ] = ["aim,fastv"],  # noqa: B006 - typer needs a literal default
    model: Annotated[
        str | None,
        typer.Option(
            help="Model path or hub id; default: built-in reference model ('reference-video': the same model "
            "with its video-trained weights)."
        ),
    ] = None,
    dataset: Annotated[str, typer.Option(help="'shapes', 'shapes-video' (built-in) or a JSONL file.")] = "shapes",
    split: Annotated[str, typer.Option(help="Split of the built-in benchmark.")] = "test",
    frames: Annotated[
        int | None, typer.Option(help="Frames per clip of --dataset shapes-video (8-32; default 8).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N samples.")] = 300,
    batch_size: Annotated[int, typer.Option(help="Samples per generate() call.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="Strategy option, e.g. -o fastv.keep_ratio=0.25.")
    ] = None,
    match: Annotated[
        str | None,
        typer.Option(
            help="Match budgets: flops=0.25 (relative prefill FLOPs) or tokens=64; a list, flops=0.15,0.25,0.4, "
            "evaluates every strategy at each budget."
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(metavar="<path>", help="Folder for samples.jsonl (resumable), summaries, plots."),
    ] = None,
    fmt: Annotated[CompareFormat, typer.Option("--format", help="table, json or csv on stdout.")] = (
        CompareFormat.table
    ),
    plot: Annotated[
        bool,
        typer.Option(
            "--plot", help="Write pareto.png (curves, frontier) and kept.png (into --output, or ./tokred-compare)."
        ),
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Greedy tokens per answer.")] = 4,
    timing_repeats: Annotated[int, typer.Option(help="Timed rounds of the latency measurement.")] = 5,
    batch_sizes: Annotated[
        str | None, typer.Option(help="Also time answer generation at these batch sizes, e.g. 1,8,32.")
    ] = None,
    match_tolerance: Annotated[
        float, typer.Option(help="Relative distance from a --match target still counted as on target.")
    ] = 0.02,
    progress_every: Annotated[
        int, typer.Option(help="Without a terminal: one progress line per this many samples.")
    ] = 50,
) -> None:
    """Compare strategies with the unreduced model: accuracy (95 % bootstrap CI), agreement and McNemar p against
    the baseline, paired tests between strategies (Holm-corrected), prefill FLOPs, prefill and decode latency,
    throughput, KV-cache bytes, peak memory and visual tokens.

    Without --model and --dataset it runs the built-in reference model on the built-in shapes benchmark.
    Per-sample results are appended to OUTPUT/samples.jsonl as they complete; rerun with the same --output to
    resume. Results go to stdout, progress to stderr.

    Examples:

    \b
    tokred compare --strategies aim,fastv
    tokred compare -s fastv -s random --match flops=0.25 --output runs/quarter --plot
    tokred compare -s aim,fastv,random,pooling --match flops=0.15,0.25,0.4 --plot --output runs/sweep
    tokred compare -s fastv@keep_ratio=0.25 -s fastv@keep_ratio=0.5 --limit 50 --format json
    tokred compare --dataset shapes-video -s aim,evs,pooling,random --match flops=0.25
    tokred compare --dataset shapes-video --frames 32 -s aim,evs --limit 20
    tokred compare --model llava-hf/llava-1.5-7b-hf --dataset my.jsonl -s aim
    """
    from tokred.compare import parse_spec, run_compare

    names = parse_strategies(strategies)
    if progress_every < 1:
        raise ConfigError(f"--progress-every {progress_every}: out of range, need progress-every >= 1")
    if output is None and plot:
        output = "tokred-compare"
    if output is not None:
        from tokred.eval.samplelog import check_output_folder

        check_output_folder(output)
    settings = settings_from_flags(
        model=model,
        dataset=dataset,
        split=split,
        frames=frames,
        limit=limit,
        batch_size=batch_size,
        seed=seed,
        strategies=names,
        options=parse_options(option, list(dict.fromkeys(parse_spec(n)[0] for n in names))),
        match=parse_match(match),
        max_new_tokens=max_new_tokens,
        timing_repeats=timing_repeats,
        batch_sizes=parse_batch_sizes(batch_sizes),
        match_tolerance=match_tolerance,
        output=Path(output).expanduser() if output is not None else None,
        plot=plot,
    )
    with _progress(fmt, progress_every) as progress:
        result = run_compare(settings, progress=progress)
    for err in result.info.get("dataset_errors", []):
        stderr().print(f"warning: skipped {err}", markup=False)
    for note in result.info.get("off_target", []):
        stderr().print(f"warning: {note}", markup=False, soft_wrap=True)  # one line each, whatever the width
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
    """Progress on stderr: a rich bar on a terminal (table output), else one plain line per ``every`` samples of each
    point (and at its end), so that a log file or CI shows where a long run is; nothing with
    ``TOKRED_DISABLE_PROGRESS_BARS=1``."""

    def __init__(self, fmt: CompareFormat, every: int = 50) -> None:
        self.mode = _progress_mode(fmt)
        self.every = every
        self.bar: Any = None
        self.tasks: dict[str, Any] = {}
        self.printed: dict[str, int] = {}

    def __enter__(self) -> Any:
        if self.mode == "off":
            return None
        if self.mode == "lines":
            return self.line
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

    def line(self, label: str, done: int, total: int) -> None:
        last = self.printed.get(label, 0)
        if done >= total or done // self.every > last // self.every:
            self.printed[label] = done
            sys.stderr.write(f"compare: {label}: {done}/{total} samples\n")
            sys.stderr.flush()

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


COLUMNS = (
    ("strategy", "strategy", "{}"),
    ("budget", "budget_target", "{:g}"),
    ("knob", "knob_value", "{:.3g}"),
    ("accuracy % [95% CI]", "accuracy", ""),
    ("agree %", "agreement", "{:.1%}"),
    ("McNemar p vs none", "mcnemar_p", "{:.3g}"),
    ("same as (Holm p>=0.05)", "indistinguishable_from", ""),
    ("rel. FLOPs", "relative_flops", "{:.3f}"),
    ("prefill ms", "prefill_latency_s", "{:.1f}"),
    ("decode ms/tok", "decode_latency_s", "{:.1f}"),
    ("samples/s", "throughput_samples_per_s", "{:.2f}"),
    ("KV MiB", "kv_cache_bytes", "{:.2f}"),
    ("peak MiB", "peak_memory_bytes", "{:.1f}"),
    ("visual->LLM", "visual_into_llm", "{:.1f}"),
)
_SCALE = {
    "prefill_flops": 1e-9,
    "prefill_latency_s": 1e3,
    "decode_latency_s": 1e3,
    "kv_cache_bytes": 2**-20,
    "peak_memory_bytes": 2**-20,
}


def _cell(row: dict[str, Any], key: str, fmt: str, labels: dict[str, str]) -> str:
    if key == "accuracy":
        acc, lo, hi = row["accuracy"] * 100, row["accuracy_ci_low"] * 100, row["accuracy_ci_high"] * 100
        return f"{acc:.1f} [{lo:.1f}, {hi:.1f}]"
    if key == "indistinguishable_from":
        if not row.get("on_target", True):
            return "off target"
        return ", ".join(labels.get(i, i) for i in row.get(key) or []) or "-"
    value = row.get(key)
    if value is None:
        return "n/a" if key == "peak_memory_bytes" else "-"
    text = fmt.format(value * _SCALE.get(key, 1))
    return text + "*" if key == "relative_flops" and not row.get("on_target", True) else text


def _emit(result: Any, fmt: CompareFormat) -> None:
    if fmt is CompareFormat.json:
        print_json(_json(result))
        return
    if fmt is CompareFormat.csv:
        sys.stdout.write(_csv(result.rows))
        return
    stdout().print(results_table(result))
    batch = result.info.get("batch_latency")
    if batch:
        stdout().print(batch_table(batch))


def results_table(result: Any) -> Table:
    """The summary as a rich table, with the notes on what it shows under it."""
    rows = result.rows
    sweeping = any(r.get("budget_target") is not None for r in rows)
    columns = [c for c in COLUMNS if sweeping or c[1] != "budget_target"]
    title = f"tokred compare: {result.info['model']}, {result.info['samples']} samples"
    table = Table(title=title, title_justify="left", caption=_caption(result), caption_justify="left")
    for name, _, _ in columns:
        table.add_column(name, justify="left" if name in ("strategy", "same as (Holm p>=0.05)") else "right")
    labels = {r["id"]: r["strategy"] for r in rows}
    for row in rows:
        table.add_row(*(_cell(row, key, f, labels) for _, key, f in columns))
    return table


def _caption(result: Any) -> str:
    notes = [f"Paired tests: {result.info.get('paired_tests', '')}."]
    if any(not r.get("on_target", True) for r in result.rows):
        notes.append("* off target: the nearest budget the strategy reaches (see the warnings).")
    batch = next((r.get("throughput_batch_size") for r in result.rows if r.get("throughput_batch_size")), None)
    if batch:
        notes.append(f"samples/s: answer generation at batch size {batch}; latencies at batch size 1.")
    methods = sorted({str(r.get("peak_memory_method")) for r in result.rows if r.get("peak_memory_method")})
    if methods:
        notes.append("peak MiB: tensor memory of a batch-1 prefill above its start, " + "; ".join(methods) + ".")
    return "\n".join(notes)


def batch_table(entries: list[dict[str, Any]]) -> Table:
    """Latency and throughput of answer generation against the batch size, one row per point."""
    sizes = sorted({e["batch_size"] for e in entries})
    table = Table(title="latency vs batch size (answer generation)", title_justify="left")
    table.add_column("strategy", justify="left")
    for b in sizes:
        table.add_column(f"b={b} ms", justify="right")
        table.add_column(f"b={b} samples/s", justify="right")
    ids = list(dict.fromkeys(e["id"] for e in entries))
    cells = {(e["id"], e["batch_size"]): e for e in entries}
    for i in ids:
        row = [i]
        for b in sizes:
            e = cells[(i, b)]
            row += [f"{e['latency_s'] * 1e3:.0f}", f"{e['samples_per_s']:.2f}"]
        table.add_row(*row)
    return table


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
        if result.info.get("kept_patch_picture"):
            stderr().print(f"wrote {result.info['kept_patch_picture']}")


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
