"""The results page's sweep (accuracy against budget on the reference model) is a real, committed compare run, and the
page is rendered from it by scripts/gen_sweep_docs.py, never typed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "docs" / "results" / "sweep"
COLUMNS = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "relative_flops", "prefill_latency_s",
           "decode_latency_s", "throughput_samples_per_s", "kv_cache_bytes", "pairwise_p_holm")  # fmt: skip


def _generator():
    spec = importlib.util.spec_from_file_location("gen_sweep_docs", ROOT / "scripts" / "gen_sweep_docs.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_sweep_snippet_has_no_drift():
    gen = _generator()
    assert gen.OUT.exists() and gen.OUT.read_text() == gen.render(), "run python scripts/gen_sweep_docs.py --update"


def test_committed_sweep_is_the_documented_command():
    gen = _generator()
    run = json.loads((SWEEP / "RUN.json").read_text())
    assert run["command"] == " ".join(gen.COMMAND) and run["wall_s"] > 0
    data = json.loads((SWEEP / "summary.json").read_text())
    assert data["settings"]["model"] is None and data["settings"]["match"] == ["flops", [0.15, 0.25, 0.4]]
    assert data["settings"]["strategies"] == ["aim", "fastv", "random", "pooling"]


def test_a_row_per_strategy_and_budget_with_every_measured_column():
    data = json.loads((SWEEP / "summary.json").read_text())
    rows = data["rows"]
    points = {(r["strategy"], r["budget_target"]) for r in rows}
    expected = {(s, b) for s in ("aim", "fastv", "random", "pooling") for b in (0.15, 0.25, 0.4)} | {("none", None)}
    assert points == expected
    for row in rows:
        assert all(row.get(key) is not None for key in COLUMNS), row["id"]
        assert row["peak_memory_bytes"] is None or row["peak_memory_bytes"] > 0, row["id"]  # never 0 as if measured
        if row["strategy"] != "none" and row["on_target"]:
            assert abs(row["relative_flops"] - row["budget_target"]) <= 0.02 * row["budget_target"] + 0.01, row["id"]
    assert data["info"]["pairwise"] and "Holm" in data["info"]["paired_tests"]


def test_results_page_shows_the_figures_and_the_table():
    page = (ROOT / "docs" / "results" / "index.md").read_text()
    assert "sweep/pareto.png" in page and "sweep/kept.png" in page
    assert '--8<-- "docs/_results/sweep.md"' in page
    for name in ("pareto.png", "kept.png"):
        assert (SWEEP / name).stat().st_size > 20_000
