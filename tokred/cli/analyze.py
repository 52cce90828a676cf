"""``tokred analyze``: model analyses that guide a strategy's configuration (``arank``: gamma-MoD's attention rank)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tokred.cli._output import Format, print_json, stderr, stdout

analyze_app = typer.Typer(
    name="analyze",
    help="Analyse a model's layers (arank: attention-map rank per decoder layer, gamma-MoD).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


@analyze_app.command("arank")
def arank_command(
    model: Annotated[
        str | None,
        typer.Option(help="'reference' (default, built-in), 'tiny', a local model folder or a cached hub id."),
    ] = None,
    samples: Annotated[int, typer.Option(min=1, max=4096, help="Prompts of the built-in benchmark (shapes:val).")] = 8,
    plot: Annotated[str | None, typer.Option(metavar="<path.png>", help="Also write a bar plot here.")] = None,
    output: Annotated[str | None, typer.Option(metavar="<path.json>", help="Also write the JSON here.")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table or json on stdout.")] = Format.table,
) -> None:
    """ARank of every decoder layer: the rank of each head's attention map (causal softmax, diagonal zeroed, as in
    gamma-MoD, arXiv:2410.13859), mean over heads and samples. Layers with a low ARank are gamma-MoD's candidates for
    Mixture-of-Depths routing. The maps come from the post-RoPE queries and keys of tokred's SDPA-safe capture (no
    output_attentions); samples run one at a time.

    Examples:

    \b
    tokred analyze arank
    tokred analyze arank --model reference --samples 16 --plot arank.png --format json
    """
    from tokred.arank import attention_ranks, save_plot, write_json
    from tokred.compare import load_runner
    from tokred.eval.datasets import load_dataset

    runner = load_runner(model)
    data = load_dataset("shapes:val", limit=samples)
    stderr().print(f"ARank of {runner.name} on {len(data)} samples of {data.name} ...")
    inputs = [runner.encode([data[i]]) for i in range(len(data))]
    result = attention_ranks(runner.model, inputs)
    written = [
        str(p) for p in (save_plot(result, plot) if plot else None, write_json(result, output) if output else None) if p
    ]
    if fmt is Format.json:
        print_json({**result.to_json(), "model": runner.name, "written": written})
        return
    stdout().print(_table(result, runner.name))
    for path in written:
        stderr().print(f"wrote {path}")


def _table(result: object, name: str) -> Table:
    from tokred.arank import ARankResult

    assert isinstance(result, ARankResult)
    mean_n = sum(result.tokens) / len(result.tokens)
    table = Table(title=f"ARank of {name} ({result.samples} samples, mean {mean_n:.0f} tokens; full rank = N - 1)")
    for col in ("layer", "ARank (head mean)", "min head", "max head", "ARank / (N - 1)"):
        table.add_column(col, justify="right")
    for i, (r, heads) in enumerate(zip(result.per_layer, result.per_head)):
        table.add_row(str(i), f"{r:.1f}", f"{min(heads):.1f}", f"{max(heads):.1f}", f"{r / (mean_n - 1):.3f}")
    return table
