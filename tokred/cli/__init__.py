"""The ``tokred`` command line (Typer + Rich). Results go to stdout; progress, logs and errors to stderr.

This module only assembles the app; each command lives in its own module and imports heavy libraries lazily.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer

from tokred.cli.analyze import analyze_app
from tokred.cli.bench import bench_command
from tokred.cli.calibrate import calibrate_command
from tokred.cli.compare import compare_command
from tokred.cli.flops import flops_command
from tokred.cli.list import list_command, show_command
from tokred.cli.plugins import plugins_command
from tokred.cli.report import report_command

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


def _interruptible(command: Callable[..., None]) -> Callable[..., None]:
    """Turn Ctrl-C inside a command into ``InterruptedRun`` (exit 130) before click turns it into an abort."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from tokred.errors import InterruptedRun

        try:
            command(*args, **kwargs)
        except KeyboardInterrupt:
            raise InterruptedRun("interrupted; nothing was written") from None

    return wrapper


app.command("list")(_interruptible(list_command))
app.command("show")(_interruptible(show_command))
app.command("plugins")(_interruptible(plugins_command))
app.command("compare")(_interruptible(compare_command))
app.command("flops")(_interruptible(flops_command))
app.command("bench")(_interruptible(bench_command))
app.command("calibrate")(_interruptible(calibrate_command))
app.command("report")(_interruptible(report_command))
app.add_typer(analyze_app, name="analyze")

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; exits with the status below (documented on the CLI page).

    * 0: success;
    * 1: an error (one ``Error: ...`` line on stderr; ``TOKRED_DEBUG=1`` shows the traceback instead);
    * 2: a usage error (unknown option, missing argument, a value of the wrong type), as click reports it;
    * 130: interrupted (Ctrl-C); one line says what was kept and how to resume.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).
    """
    from tokred._env import check_switches, env_flag
    from tokred.errors import InterruptedRun, TokredError

    try:
        check_switches()
    except TokredError as err:
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    debug = env_flag("TOKRED_DEBUG")
    usage, exits, aborts = _click_exceptions()
    try:
        app(args=argv, standalone_mode=False)
    except InterruptedRun as err:
        if debug:
            raise
        print(str(err), file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except TokredError as err:
        if debug:
            raise
        print(f"Error: {_one_line(str(err))}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except usage as err:
        err.show()  # type: ignore[attr-defined]
        sys.exit(getattr(err, "exit_code", EXIT_USAGE) or EXIT_USAGE)
    except exits as err:
        sys.exit(getattr(err, "exit_code", 0))
    except aborts:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as err:  # noqa: BLE001 - a bug: one line, the traceback on demand
        if debug:
            raise
        print(
            f"Error: internal error ({type(err).__name__}: {_one_line(str(err))}); rerun with TOKRED_DEBUG=1 for the "
            "traceback and please report it",
            file=sys.stderr,
        )
        sys.exit(EXIT_ERROR)


def _one_line(text: str) -> str:
    """Messages are one line on stderr (a multi-line message from a library is joined)."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


if __name__ == "__main__":  # pragma: no cover
    main()
