"""The ``tokred`` command line (Typer + Rich). Results go to stdout; progress, logs and errors to stderr.

This module only assembles the app; each command lives in its own module and imports heavy libraries lazily.
"""

from __future__ import annotations

import os
import sys

import typer

from tokred.cli.bench import bench_command
from tokred.cli.compare import compare_command
from tokred.cli.flops import flops_command
from tokred.cli.list import list_command, show_command
from tokred.cli.plugins import plugins_command

app = typer.Typer(
    name="tokred",
    help=(
        "Pluggable visual-token reduction for multimodal LLMs.\n\n"
        "Start with `tokred list` to see strategies and `tokred show aim` for one of them."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("list")(list_command)
app.command("show")(show_command)
app.command("plugins")(plugins_command)
app.command("compare")(compare_command)
app.command("flops")(flops_command)
app.command("bench")(bench_command)


def _click_exceptions() -> tuple[tuple[type[BaseException], ...], ...]:
    """(usage errors, exits, aborts) of click, of the copy of click that typer >= 0.29 vendors, and of typer."""
    import importlib

    groups: tuple[list[type[BaseException]], list[type[BaseException]], list[type[BaseException]]] = ([], [], [])
    for module_name in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for group, name in zip(groups, ("ClickException", "Exit", "Abort")):
            if hasattr(module, name):
                group.append(getattr(module, name))
    return tuple(tuple(g) for g in groups)


def main() -> None:
    """Console-script entry point: known errors become one line on stderr and exit code 1."""
    from tokred.errors import TokredError

    usage, exits, aborts = _click_exceptions()
    try:
        app(standalone_mode=False)
    except TokredError as err:
        if os.environ.get("TOKRED_DEBUG"):
            raise
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(1)
    except usage as err:
        err.show()  # type: ignore[attr-defined]
        sys.exit(getattr(err, "exit_code", 2) or 2)
    except exits as err:
        sys.exit(getattr(err, "exit_code", 0))
    except aborts:
        print("Aborted.", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
