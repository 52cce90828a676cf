"""``tokred list`` and ``tokred show``: what is registered, with every option."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer
from rich.table import Table

from tokred._components import BaseComponent, Strategy
from tokred._config import describe_options
from tokred._plugins import get_registries
from tokred.cli._output import Format, print_json, stdout
from tokred.errors import UnknownNameError

KINDS = ("strategies", "mergers", "scorers", "schedulers", "routers", "adapters")


def describe(cls: type[Any], kind: str) -> dict[str, Any]:
    """JSON-ready description of a registered class."""
    regs = get_registries()
    info: dict[str, Any] = {
        "name": cls.name,
        "kind": kind.rstrip("s") if kind != "strategies" else "strategy",
        "summary": cls.summary() if hasattr(cls, "summary") else (inspect.getdoc(cls) or "").split("\n")[0],
        "paper": getattr(cls, "paper", ""),
        "plugin": regs.by_kind(kind).plugin(cls.name),
        "options": describe_options(cls.Config) if hasattr(cls, "Config") else [],
    }
    if kind == "mergers":
        info["stage"] = cls.stage
    if kind == "scorers":
        info["query_rows"] = cls.query_rows
    if kind == "strategies":
        info["budget_knob"] = cls.budget_knob
        info["budget_direction"] = cls.budget_direction
        info["components"] = _strategy_components(cls)
    return info


def _strategy_components(cls: type[Strategy]) -> dict[str, Any]:
    strategy = cls()
    return {
        role: None if comp is None else {"name": comp.name, "config": comp.config.model_dump(mode="json")}
        for role, comp in strategy.components.items()
    }


def list_command(
    kind: Annotated[
        str, typer.Argument(help="What to list: all, strategies, mergers, scorers, schedulers, routers or adapters.")
    ] = "all",
    options: Annotated[bool, typer.Option("--options", help="Show every option with default and bounds.")] = False,
    fmt: Annotated[Format, typer.Option("--format", help="table (stdout, for people) or json.")] = Format.table,
) -> None:
    """List registered strategies and components.

    Examples:

    \b
    tokred list
    tokred list strategies --options
    tokred list schedulers --format json
    """
    kinds = KINDS if kind == "all" else (_normalise_kind(kind),)
    regs = get_registries()
    data = {k: [describe(regs.by_kind(k).get(n), k) for n in regs.by_kind(k).names()] for k in kinds}
    if fmt is Format.json:
        print_json(data)
        return
    console = stdout()
    for k, rows in data.items():
        console.print(_table(k, rows, options))


def _normalise_kind(kind: str) -> str:
    key = kind.strip().lower()
    key = "strategies" if key in ("strategy", "strategies") else key if key.endswith("s") else key + "s"
    if key not in KINDS:
        raise UnknownNameError(f"Unknown kind '{kind}'. Available: all, {', '.join(KINDS)}")
    return key


def _table(kind: str, rows: list[dict[str, Any]], options: bool) -> Table:
    table = Table(title=kind, title_justify="left", show_lines=options)
    table.add_column("name", style="bold")
    table.add_column("summary")
    table.add_column("options" if options else "option names")
    for row in rows:
        if options:
            opts = "\n".join(_option_line(o) for o in row["options"])
        else:
            opts = ", ".join(o["name"] for o in row["options"])
        table.add_row(row["name"], row["summary"], opts or "-")
    return table


def _option_line(o: dict[str, Any]) -> str:
    bounds = f" [{o['bounds']}]" if o["bounds"] else ""
    return f"{o['name']}: {o['type']} = {o['default']!r}{bounds} - {o['description']}"


def show_command(
    name: Annotated[str, typer.Argument(help="A strategy or component name, e.g. aim, fastv, linear.")],
    kind: Annotated[
        str | None, typer.Option("--kind", help="Disambiguate: strategy, merger, scorer, scheduler.")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.table,
) -> None:
    """Show one strategy or component: its paper, what it does, its components and every option.

    A name used by several kinds (``aim`` is a strategy, a merger and a scorer) shows the strategy unless
    ``--kind`` says otherwise.

    Examples:

    \b
    tokred show aim
    tokred show aim --kind scorer
    tokred show linear --format json
    """
    cls, k = _find(name, kind)
    info = describe(cls, k)
    if fmt is Format.json:
        print_json(info)
        return
    _print_info(cls, info)


def _find(name: str, kind: str | None) -> tuple[type[Any], str]:
    import difflib

    regs = get_registries()
    kinds = (_normalise_kind(kind),) if kind else KINDS
    for k in kinds:
        if name in regs.by_kind(k):
            return regs.by_kind(k).get(name), k
    every = sorted({n for k in kinds for n in regs.by_kind(k).names()})
    close = [n for n in difflib.get_close_matches(name.lower(), every, n=3, cutoff=0.5) if n != name]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    if kind:
        elsewhere = [k.rstrip("s") if k != "strategies" else "strategy" for k in KINDS if name in regs.by_kind(k)]
        where = f" '{name}' is a {' and a '.join(elsewhere)}, not a {kinds[0].rstrip('s')}." if elsewhere else ""
        label = kinds[0].rstrip("s") if kinds[0] != "strategies" else "strategy"
        raise UnknownNameError(f"Unknown {label} '{name}'.{where}{hint} Available {kinds[0]}: {', '.join(every)}")
    raise UnknownNameError(f"Unknown name '{name}'.{hint} Available: {', '.join(every)}")


def _print_info(cls: type[BaseComponent], info: dict[str, Any]) -> None:
    console = stdout()
    console.print(f"[bold]{info['name']}[/bold] ({info['kind']}, plugin {info['plugin']})")
    if info["paper"]:
        console.print(f"paper: {info['paper']}")
    console.print()
    console.print(inspect.getdoc(cls) or "", markup=False)
    module_doc = inspect.getdoc(inspect.getmodule(cls))
    if module_doc:
        console.print()
        console.print(module_doc, markup=False)
    for role, comp in info.get("components", {}).items():
        console.print(f"{role}: {comp['name'] if comp else '-'}" + (f" {comp['config']}" if comp else ""))
    if "budget_knob" in info:
        console.print(f"budget knob: {info['budget_knob']} (direction {info['budget_direction']:+d})")
    table = Table(title="options", title_justify="left")
    for col in ("name", "type", "default", "bounds", "description"):
        table.add_column(col)
    for o in info["options"]:
        table.add_row(o["name"], o["type"], repr(o["default"]), o["bounds"] or "-", o["description"])
    console.print(table)
