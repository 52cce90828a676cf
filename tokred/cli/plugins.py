"""``tokred plugins``: the loaded plugins, their distributions and the hooks they implement."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tokred._plugins import plugin_distributions
from tokred.cli._output import Format, print_json, stdout


def plugins_command(
    fmt: Annotated[Format, typer.Option("--format", help="json (default) or table.")] = Format.json,
    builtins: Annotated[bool, typer.Option("--all/--external", help="Include the built-in plugins.")] = True,
) -> None:
    """List loaded plugins (built-in and from the ``tokred`` entry-point group).

    Environment switches: TOKRED_DISABLE_PLUGIN_AUTOLOAD=1 skips entry points, TOKRED_DISABLED_PLUGINS=a,b blocks
    plugins by name, TOKRED_TRACE_PLUGINS=1 traces hook calls to stderr.

    Examples:

    \b
    tokred plugins
    tokred plugins --external --format table
    """
    rows = [r for r in plugin_distributions() if builtins or not r["builtin"]]
    if fmt is Format.json:
        print_json(rows)
        return
    table = Table(title="plugins", title_justify="left")
    for col in ("name", "distribution", "version", "hooks"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["distribution"], r["version"], ", ".join(r["hooks"]))
    stdout().print(table)
