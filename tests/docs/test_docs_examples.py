"""Every example file under docs/ runs, and every ``pycon`` session in the pages gives the output it shows."""

from __future__ import annotations

import doctest
import re

import pytest
from docs_helpers import DOCS, EXAMPLES, run_python

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.py"))
PYCON = re.compile(r"^```pycon[^\n]*\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)


def test_examples_are_found():
    assert {p.name for p in EXAMPLE_FILES} >= {
        "quickstart.py",
        "reproduce_aim_flops.py",
        "patch_tiny_model.py",
        "custom_adapter.py",
    }


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_runs(path):
    result = run_python(str(path), env={"TOKRED_DISABLE_PLUGIN_AUTOLOAD": "1"}, timeout=600)
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout}\n{result.stderr}"


def _sessions() -> list[tuple[str, str]]:
    out = []
    for page in sorted(DOCS.rglob("*.md")):
        for i, match in enumerate(PYCON.finditer(page.read_text(encoding="utf-8"))):
            out.append((f"{page.relative_to(DOCS)}#{i}", match.group("body")))
    return out


SESSIONS = _sessions()


def test_sessions_are_found():
    assert len(SESSIONS) >= 5


@pytest.mark.parametrize(("where", "body"), SESSIONS, ids=[w for w, _ in SESSIONS])
def test_pycon_session_output(where, body, monkeypatch):
    monkeypatch.setenv("TOKRED_DISABLE_PLUGIN_AUTOLOAD", "1")
    parser = doctest.DocTestParser()
    test = parser.get_doctest(body, {}, where, where, 0)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    out: list[str] = []
    runner.run(test, out=out.append)
    assert runner.failures == 0, "".join(out)
