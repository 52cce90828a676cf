"""Run the test suite on the oldest admitted transformers, or on the newest release the registry offers (the canary).

    python scripts/transformers_matrix.py oldest   # `make test-oldest`: the lower bound of pyproject.toml
    python scripts/transformers_matrix.py latest   # `make test-latest`: the newest release, ignoring our upper bound

Each target keeps its own virtual environment (``.venv-oldest``, ``.venv-latest``) with the CPU torch 2.13.0 wheel,
tokred (editable, with the dev extras) and the transformers under test; a rerun reuses it and reinstalls only
what changed. The first line printed says which transformers is tried and the tested range; the last lines say what
passed and which tests failed. The exit status is pytest's (0 when everything passed).

``latest`` deselects the two tests that assert the installed version is inside the tested range (marker
``in_range``): outside the range they fail by design, and the canary is there to find what *else* breaks. Pass
``--pre`` to try pre-releases too. Extra arguments after ``--`` go to pytest (e.g. ``-- -m integration -x``).

Standard library only: it runs before any environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the CPU wheel on this machine's disk (an unpinned torch is a CUDA build)
LMMS_EVAL = "lmms-eval==0.7.3"  # the Makefile's LMMS_EVAL: installed --no-deps beside the lmms extra (tests/lmms)


def declared_range() -> tuple[str, str]:
    """The ``transformers>=A,<B`` bounds declared in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"transformers>=([0-9][^,"]*),<([0-9][^,"]*)"', text)
    if m is None:
        sys.exit("pyproject.toml declares no 'transformers>=A,<B' dependency; the matrix needs both bounds")
    return m.group(1), m.group(2)


def run(cmd: list[str], quiet: bool = True) -> None:
    """Run a command; on failure print its output and exit with its status."""
    res = subprocess.run(cmd, capture_output=quiet, text=True)
    if res.returncode != 0:
        if quiet:
            sys.stderr.write(res.stdout[-4000:] + res.stderr[-4000:])
        sys.exit(f"failed ({res.returncode}): {' '.join(cmd)}")


def venv_python(venv: Path) -> Path:
    """The venv's interpreter, creating the venv with torch if it does not exist yet."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv.name} ...", file=sys.stderr, flush=True)
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"])
        run([str(python), "-m", "pip", "install", "-q", TORCH])
    return python


def installed(python: Path, dist: str) -> str | None:
    """Version of ``dist`` in the venv, or ``None``."""
    code = f"import importlib.metadata as m\ntry: print(m.version({dist!r}))\nexcept m.PackageNotFoundError: pass"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()
    return out or None


def install_tokred(python: Path, venv: Path) -> None:
    """Install tokred with its dev and lmms extras (plus lmms-eval without its requirements), once per
    pyproject.toml content."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = venv / ".tokred-installed"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"installing tokred[dev,lmms] into {venv.name} ...", file=sys.stderr, flush=True)
    run([str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev,lmms]"])
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", LMMS_EVAL])
    stamp.write_text(digest)


def prepare(target: str, pre: bool) -> tuple[Path, str, str]:
    """Set up the target's venv; returns (python, transformers version, what it is)."""
    low, high = declared_range()
    venv = ROOT / f".venv-{target}"
    python = venv_python(venv)
    install_tokred(python, venv)
    if target == "oldest":
        if installed(python, "transformers") != low:
            run([str(python), "-m", "pip", "install", "-q", f"transformers=={low}"])
        what = f"the oldest admitted version (tested range >={low},<{high})"
    else:
        # --upgrade past tokred's own upper bound: pip installs it and only warns about tokred's requirement.
        cmd = [str(python), "-m", "pip", "install", "-q", "--upgrade", "transformers"] + (["--pre"] if pre else [])
        run(cmd)
        what = f"the newest release on the registry (tested range >={low},<{high})"
    version = installed(python, "transformers")
    if version is None:
        sys.exit(f"transformers is not installed in {venv.name}")
    return python, version, what


def failures(junit: Path) -> list[str]:
    """Node ids of the failed and errored tests in a JUnit XML report."""
    if not junit.exists():
        return []
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            cls = case.get("classname", "").replace(".", "/")
            out.append(f"{cls}.py::{case.get('name')}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=["oldest", "latest"], help="which transformers to test on")
    parser.add_argument("--pre", action="store_true", help="latest: include pre-releases")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    python, version, what = prepare(args.target, args.pre)
    print(f"{args.target}: transformers {version}, {what}", flush=True)
    report = ROOT / f".venv-{args.target}" / "pytest-report.xml"
    report.unlink(missing_ok=True)
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    if args.target == "latest":
        cmd += ["-m", "not in_range"]
    start = time.monotonic()
    env = {**os.environ, "TOKRED_DISABLE_PROGRESS_BARS": "1"}
    code = subprocess.run(cmd + args.pytest_args, cwd=ROOT, env=env).returncode
    failed = failures(report)
    summary = {"target": args.target, "transformers": version, "exit": code, "failed": failed}
    summary["seconds"] = round(time.monotonic() - start, 1)
    (ROOT / f".venv-{args.target}" / "summary.json").write_text(json.dumps(summary, indent=2))
    verdict = "passed" if code == 0 else f"FAILED ({len(failed)} tests, pytest exit {code})"
    print(f"{args.target}: transformers {version}: {verdict}")
    for node in failed:
        print(f"  failed: {node}")
    return code


if __name__ == "__main__":
    sys.exit(main())
