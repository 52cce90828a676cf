"""Output helpers shared by the commands: results to stdout, everything else to stderr."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from typing import Any

from rich.console import Console


class Format(str, Enum):
    """Output formats of listing commands."""

    table = "table"
    json = "json"


def stdout() -> Console:
    """Console for results (no colour when piped)."""
    return Console(soft_wrap=False, width=int(os.environ.get("COLUMNS", "160")))


def stderr() -> Console:
    """Console for progress, logs and errors."""
    return Console(stderr=True)


def print_json(data: Any) -> None:
    """Write ``data`` as indented JSON to stdout (plain, never colourised, so it always parses)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
