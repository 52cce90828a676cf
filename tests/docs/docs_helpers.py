"""Helpers shared by the docs tests: paths, and a reader of the ``::: identifier`` blocks of the API pages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
EXAMPLES = DOCS / "examples"

_BLOCK = re.compile(r"^::: (?P<ident>[\w.]+)[ \t]*\n(?P<options>(?:[ \t]+.*\n|[ \t]*\n(?=[ \t]+\S))*)", re.MULTILINE)


@dataclass
class Block:
    """One ``::: identifier`` block of a page and what it renders."""

    ident: str
    page: Path
    members: bool | list[str] | None = None  # None: the default (public members); False: none; list: those
    options: str = field(default="", repr=False)


def api_blocks() -> list[Block]:
    """Every ``:::`` block of the reference pages (``docs/reference/**/*.md``) and the hooks page."""
    pages = sorted(REFERENCE.rglob("*.md")) + [DOCS / "plugins" / "hooks.md"]
    blocks = []
    for page in pages:
        for match in _BLOCK.finditer(page.read_text(encoding="utf-8")):
            options = match.group("options")
            members: bool | list[str] | None = None
            if re.search(r"^\s+members:\s*false\s*$", options, re.MULTILINE):
                members = False
            elif listed := re.search(r"^\s+members:\s*\[(.*)\]\s*$", options, re.MULTILINE):
                members = [m.strip() for m in listed.group(1).split(",")]
            elif re.search(r"^\s+members:\s*$", options, re.MULTILINE):
                members = re.findall(r"^\s+- (\w+)\s*$", options, re.MULTILINE)
            blocks.append(Block(match.group("ident"), page, members, options))
    return blocks


def rendered(blocks: list[Block], module: str, name: str, defined_in: str) -> bool:
    """Whether ``module.name`` (defined in ``defined_in``) is rendered by one of ``blocks``."""
    for block in blocks:
        if block.ident in (f"{module}.{name}", f"{defined_in}.{name}"):
            return True
        if block.ident in (module, defined_in):
            if block.members is None and not name.startswith("_"):
                return True
            if isinstance(block.members, list) and name in block.members:
                return True
    return False


def run_python(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run the test interpreter with ``args`` from the repository root; returns the completed process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )
