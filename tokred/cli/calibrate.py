"""``tokred calibrate``: fit a per-layer recipe (FitPrune deletions, PrefixKV KV retention) for a model and budget."""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer
from rich.table import Table

from tokred.cli._output import Format, print_json, stderr, stdout
from tokred.errors import ConfigError

BUDGET_KINDS = {"fitprune": "flops", "prefixkv": "retention"}


def parse_budget(method: str, value: str) -> tuple[str, float]:
    """``flops=0.5`` (fitprune: relative prefill FLOPs) or ``retention=0.5`` (prefixkv: share of KV entries kept).

    Raises:
        ConfigError: For an unknown method, another budget kind, or a value outside (0, 1].
    """
    if method not in BUDGET_KINDS:
        raise ConfigError(f"unknown method {method!r} to calibrate; choose one of {', '.join(BUDGET_KINDS)}")
    want = BUDGET_KINDS[method]
    kind, _, number = value.partition("=")
    if kind != want or not number:
        raise ConfigError(f"--budget '{value}': {method} takes --budget {want}=FRACTION (e.g. {want}=0.5)")
    try:
        target = float(number)
    except ValueError:
        raise ConfigError(f"--budget '{value}': '{number}' is not a number") from None
    if not (math.isfinite(target) and 0 < target <= 1):
        raise ConfigError(f"--budget {want}={number}: the budget must be in (0, 1]")
    return kind, target


def calibrate_command(
    method: Annotated[str, typer.Argument(help="fitprune or prefixkv.")],
    budget: Annotated[str, typer.Option(help="fitprune: flops=FRACTION; prefixkv: retention=FRACTION.")],
    model: Annotated[
        str | None, typer.Option(help="'reference' (default, built-in), a local model folder or a cached hub id.")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, max=4096, help="Calibration samples (shapes:val).")] = 64,
    output: Annotated[str | None, typer.Option(metavar="<path>", help="Also write the recipe here.")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table or json on stdout.")] = Format.table,
) -> None:
    """Fit a per-layer recipe on calibration samples of the built-in benchmark and cache it for the model.

    fitprune: per layer, head-max attention gives each visual token a cross (text after the image) and a self
    (visual queries) score; alpha is binary-searched (tolerance 0.01) until the pruned prefill reaches the FLOPs
    budget; the recipe is the mean deletions per layer. prefixkv: one global cutoff on the layers' cumulative
    attention distributions gives each layer's kept share of the KV cache. The recipe is cached, so
    `-s fitprune -o fitprune.budget=B` (or --match flops=B) and prefixkv at that retention use it.

    Examples:

    \b
    tokred calibrate fitprune --budget flops=0.5
    tokred calibrate fitprune --model reference --budget flops=0.3 --samples 32 --format json
    tokred calibrate prefixkv --budget retention=0.5 --output prefixkv-0.5.json
    """
    from tokred.calibration import cache_path, calibrate, model_name, save_recipe
    from tokred.compare import load_runner

    kind, value = parse_budget(method, budget)
    runner = load_runner(model)
    stderr().print(f"calibrating {method} at {kind}={value:g} on {samples} samples of {runner.name} ...")
    recipe = calibrate(method, runner, kind, value, samples=samples)
    paths = [str(save_recipe(cache_path(method, model_name(runner.model), kind, value), recipe))]
    if output is not None:
        paths.append(str(save_recipe(output, recipe)))
    recipe_out = {**recipe, "written": paths}
    if fmt is Format.json:
        print_json(recipe_out)
        return
    stdout().print(_table(recipe_out, kind, value))


def _table(recipe: dict[str, Any], kind: str, value: float) -> Table:
    achieved = float(recipe["achieved"][kind])
    title = (
        f"{recipe['method']} recipe for {recipe['model']}: {kind} {achieved:.4f} for a budget of {value:g} "
        f"({(achieved - value) / value:+.2%}), {recipe['samples']} samples; written to {', '.join(recipe['written'])}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("layer", justify="right")
    per_layer = recipe["per_layer"]
    if recipe["method"] == "fitprune":
        table.add_column("visual tokens deleted (mean)", justify="right")
        table.add_column("visual tokens kept", justify="right")
        kept = float(recipe["n_visual"])
        for i, d in enumerate(per_layer):
            kept -= float(d)
            table.add_row(str(i), f"{float(d):.2f}", f"{kept:.1f}")
    else:
        table.add_column("KV entries kept (share)", justify="right")
        for i, r in enumerate(per_layer):
            table.add_row(str(i), f"{float(r):.3f}")
    return table
