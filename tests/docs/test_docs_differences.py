"""Every entry of a strategy page's "Where tokred differs from the reference code" list names a test that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["aim", "aim-merge", "aim-prune", "fastv", "tome", "random", "pooling"]
REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _entries(page: str) -> list[str]:
    text = (ROOT / "docs" / "strategies" / f"{page}.md").read_text()
    section = text.split("## Where tokred differs from the reference code", 1)[1].split("\n## ", 1)[0]
    bullets = re.split(r"\n- ", section)
    return [b for b in bullets[1:]] if len(bullets) > 1 else [section]


@pytest.mark.parametrize("page", PAGES)
def test_every_difference_names_an_existing_test(page):
    entries = _entries(page)
    assert entries
    for entry in entries:
        refs = REF.findall(entry)
        assert refs, f"docs/strategies/{page}.md: an entry names no test: {entry[:80]!r}"
        for path, name in refs:
            source = ROOT / path
            assert source.exists(), f"{page}: {path} does not exist"
            assert re.search(rf"def {name}\b", source.read_text()), f"{page}: {path} has no test {name}"
