"""``tokred report`` on hand-written lmms-eval output folders (the real lmms-eval writes them in tests/lmms)."""

from __future__ import annotations

import json

import pytest

from tokred.errors import ConfigError
from tokred.report import load_runs, parse_model_args, summarise_runs
from tokred.stats import bootstrap_ci, mcnemar_exact


def _stats(rel, visual_llm):
    return {
        "strategy": "x",
        "relative_prefill_flops": rel,
        "prefill_flops": 1e9 * rel,
        "visual_tokens_in": 256,
        "visual_tokens_into_llm": visual_llm,
        "visual_tokens_out": visual_llm,
        "mean_tokens_per_layer": 100.0 * rel,
        "tokens_per_layer": [1, 2],
    }


def write_run(folder, strategy, answers, correct, rel=1.0, date="20261201_000000", extra_args=""):
    """An lmms-eval output folder of the tokred backend: results.json and one task's sample log."""
    sub = folder / "tokred__reference"
    sub.mkdir(parents=True)
    results = {
        "results": {"shapes": {"exact_match,none": sum(correct.values()) / len(correct)}},
        "configs": {"shapes": {"metric_list": [{"metric": "exact_match"}]}},
        "config": {"model": "tokred", "model_args": f"pretrained=tokred:reference,strategy={strategy}{extra_args}"},
    }
    (sub / f"{date}_results.json").write_text(json.dumps(results))
    lines = [
        json.dumps(
            {
                "doc_id": i,
                "filtered_resps": [answers[i]],
                "exact_match": float(correct[i]),
                "token_counts": [{"input_tokens": 300, "tokred": _stats(rel, 256 * rel)}],
            }
        )
        for i in sorted(answers)
    ]
    (sub / f"{date}_samples_shapes.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def two_runs(tmp_path):
    base_correct = {i: i % 3 != 0 for i in range(12)}
    fast_correct = {i: i % 2 == 0 for i in range(12)}
    write_run(tmp_path / "none", "none", {i: f"a{i}" for i in range(12)}, base_correct)
    # the fastv run lacks doc 11 and has one extra doc the baseline lacks
    answers = {i: (f"a{i}" if i < 6 else "other") for i in list(range(11)) + [40]}
    fast = {**{i: fast_correct[i] for i in range(11)}, 40: True}
    write_run(tmp_path / "fastv", "fastv", answers, fast, rel=0.5, extra_args=",keep_ratio=0.25")
    return tmp_path, base_correct, fast_correct


def test_runs_are_matched_on_doc_ids_and_compared_with_the_baseline(two_runs):
    root, base_correct, fast_correct = two_runs
    runs = load_runs([root / "fastv", root / "none"])
    assert [r.label for r in runs] == ["fastv(keep_ratio=0.25)", "none"]
    [(task, rows)] = summarise_runs(runs).items()
    assert task == "shapes"
    base, fast = rows
    assert base["strategy"] == "none" and base["n"] == 12 and base["mcnemar_p"] is None
    ids = list(range(11))
    assert fast["n"] == 11 and fast["unmatched"] == 1
    mean, lo, hi = bootstrap_ci([fast_correct[i] for i in ids], seed=0)
    assert (fast["accuracy"], fast["accuracy_ci_low"], fast["accuracy_ci_high"]) == (mean, lo, hi)
    assert fast["mcnemar_p"] == mcnemar_exact([fast_correct[i] for i in ids], [base_correct[i] for i in ids])
    assert fast["agreement"] == pytest.approx(6 / 11)
    assert fast["relative_flops"] == pytest.approx(0.5) and base["relative_flops"] == pytest.approx(1.0)
    assert fast["visual_into_llm"] == pytest.approx(128.0)


def test_an_explicit_baseline_and_metric(two_runs):
    root, _, _ = two_runs
    runs = load_runs([root / "none", root / "fastv"])
    rows = summarise_runs(runs, baseline="fastv", metric="exact_match")["shapes"]
    assert rows[0]["strategy"].startswith("fastv") and rows[1]["n"] == 11
    with pytest.raises(ConfigError, match="--baseline 'aim' is none of the runs"):
        summarise_runs(runs, baseline="aim")
    with pytest.raises(ConfigError, match="no numeric per-sample 'acc'"):
        summarise_runs(runs, metric="acc")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p / "missing", "no such folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no lmms-eval results"),
    ],
)
def test_bad_folders_fail_clearly(tmp_path, two_runs, make, needle):
    root, _, _ = two_runs
    with pytest.raises(ConfigError, match=needle):
        load_runs([root / "none", make(tmp_path)])


def test_a_run_without_sample_logs_asks_for_log_samples(two_runs):
    root, _, _ = two_runs
    for f in (root / "fastv").rglob("*.jsonl"):
        f.unlink()
    with pytest.raises(ConfigError, match="--log_samples"):
        load_runs([root / "none", root / "fastv"])


def test_one_run_is_not_a_comparison(two_runs):
    root, _, _ = two_runs
    with pytest.raises(ConfigError, match="at least two"):
        load_runs([root / "none"])


def test_model_args_parsing_keeps_bracketed_commas():
    assert parse_model_args("pretrained=a/b,strategy=tome,layers=[1,2],mode=drop,r=0.5") == {
        "pretrained": "a/b",
        "strategy": "tome",
        "layers": [1, 2],
        "mode": "drop",
        "r": 0.5,
    }


def _main(*argv):
    from tokred.cli import main

    try:
        main(list(argv))
    except SystemExit as err:
        return err.code or 0
    return 0


def test_cli_report_table_json_csv_and_plot(two_runs, capsys):
    root, _, _ = two_runs
    assert _main("report", str(root / "none"), str(root / "fastv"), "--format", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["strategy"] for r in data["tasks"]["shapes"]] == ["none", "fastv(keep_ratio=0.25)"]
    assert _main("report", str(root / "none"), str(root / "fastv"), "--plot", "--output", str(root / "rep")) == 0
    out = capsys.readouterr().out
    assert "tokred report: shapes (exact_match)" in out and "fastv(keep_ratio=0.25)" in out
    assert (root / "rep" / "pareto_shapes.png").stat().st_size > 1000
    assert (root / "rep" / "summary.csv").read_text().startswith("task,metric,strategy")
    assert _main("report", str(root / "none")) == 1
    assert "at least two" in capsys.readouterr().err
