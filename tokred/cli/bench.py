"""``tokred bench``: measured prefill speedup of strategies against their FLOPs prediction."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from tokred.cli._options import parse_options
from tokred.cli._output import Format, print_json, stderr, stdout


def bench_command(
    strategies: Annotated[str, typer.Option("--strategies", "-s", help="Strategies to time.")] = "fastv,aim-prune",
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="e.g. -o fastv.keep_ratio=0.25")] = None,
    hidden: Annotated[int, typer.Option(help="Decoder width.")] = 2048,
    layers: Annotated[int, typer.Option(help="Decoder layers.")] = 8,
    intermediate: Annotated[int, typer.Option(help="MLP width.")] = 5632,
    heads: Annotated[int, typer.Option(help="Attention heads.")] = 16,
    visual: Annotated[int, typer.Option(help="Visual tokens (a square number).")] = 576,
    text: Annotated[int, typer.Option(help="Text tokens.")] = 64,
    repeats: Annotated[int, typer.Option(help="Timed interleaved rounds.")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed rounds first.")] = 1,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice).")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
) -> None:
    """Prefill benchmark on a LLaVA-1.5-shaped model with random weights (default: hidden 2048, 8 layers,
    576 visual + 64 text tokens): for each strategy, measured speedup over the stock model against the speedup
    its FLOPs predict, the share of prefill time spent in its scorer and merger, and the overhead of the patch
    when nothing is dropped. Runs are interleaved; medians are reported. A benchmark, not a test: on a shared
    machine, repeat it and read the spread.

    Examples:

    \b
    tokred bench
    tokred bench -s fastv -o fastv.keep_ratio=0.25 --repeats 10 --threads 2
    tokred bench --layers 4 --hidden 512 --format json
    """
    import math

    from tokred.cli.compare import parse_strategies
    from tokred.cli.flops import check_counts
    from tokred.errors import ConfigError
    from tokred.pipeline_bench import pipeline_benchmark

    check_counts(
        hidden=(hidden, 1),
        layers=(layers, 1),
        intermediate=(intermediate, 1),
        heads=(heads, 1),
        visual=(visual, 1),
        text=(text, 1),
        repeats=(repeats, 1),
        warmup=(warmup, 0),
        threads=(threads, 1),
    )
    if hidden % heads:
        raise ConfigError(f"--heads {heads} does not divide --hidden {hidden}; e.g. --heads {_divisor(hidden, heads)}")
    if math.isqrt(visual) ** 2 != visual:
        side = max(1, round(math.sqrt(visual)))
        raise ConfigError(f"--visual {visual} is not a square number (the tokens form a grid); e.g. {side * side}")
    names = parse_strategies([strategies])
    opts = parse_options(option, names)
    variants = {name: {"name": name, **opts.get(name, {})} for name in names}
    import tokred

    for name in names:  # unknown names and bad options fail before anything is built or timed
        tokred.create_strategy(name, **opts.get(name, {}))
    stderr().print(f"timing stock, patched-keep-all and {', '.join(names)} ({warmup} + {repeats} rounds) ...")
    report = pipeline_benchmark(
        hidden_size=hidden,
        num_layers=layers,
        intermediate_size=intermediate,
        heads=heads,
        visual=visual,
        text=text,
        repeats=repeats,
        warmup=warmup,
        threads=threads,
        strategies=variants,
    )
    if fmt is Format.json:
        print_json(report)
        return
    _print(report)


def _divisor(hidden: int, heads: int) -> int:
    """The divisor of ``hidden`` closest to ``heads`` (a hint for --heads)."""
    return min((d for d in range(1, hidden + 1) if hidden % d == 0), key=lambda d: (abs(d - heads), d))


def _print(report: dict[str, Any]) -> None:
    table = Table(
        title=f"prefill benchmark ({report['threads']} threads, {report['repeats']} rounds)", title_justify="left"
    )
    for col in ("variant", "median ms", "IQR ms", "speedup", "FLOPs speedup", "efficiency", "scorer+merger"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for label, median in report["median_s"].items():
        s = report["strategies"].get(label)
        cells = (
            [
                f"{s['measured_speedup']:.2f}x",
                f"{s['flops_speedup']:.2f}x",
                f"{s['efficiency']:.2f}",
                f"{s['component_share']:.2%}",
            ]
            if s
            else ["-"] * 4
        )
        table.add_row(label, f"{median * 1e3:.0f}", f"{report['spread_s'][label] * 1e3:.0f}", *cells)
    stdout().print(table)
    stdout().print(
        f"patch overhead with nothing dropped: {report['overhead']:+.1%} (median), "
        f"{report['min_overhead']:+.1%} (fastest runs)"
    )
