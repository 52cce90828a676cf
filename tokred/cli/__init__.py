"""The ``tokred`` command line (Typer + Rich). Results go to stdout; progress, logs and errors to stderr.

This module only assembles the app; each command lives in its own module and imports heavy libraries lazily.
"""

from __future__ import annotations

import os
import sys

import typer

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


def main() -> None:
    """Console-script entry point: known errors become one line on stderr and exit code 1."""
    from tokred.errors import TokredError

    try:
        app(standalone_mode=False)
    except TokredError as err:
        if os.environ.get("TOKRED_DEBUG"):
            raise
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:  # click usage errors and the like
        import click

        if isinstance(err, click.exceptions.Exit):
            sys.exit(err.exit_code)
        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code if err.exit_code else 2)
        if isinstance(err, click.exceptions.Abort):
            print("Aborted.", file=sys.stderr)
            sys.exit(1)
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
