"""The comparison engine and ``tokred compare`` on the tiny random LLaVA (mechanics, not accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from tokred.cli import app
from tokred.cli.compare import parse_match, parse_strategies
from tokred.compare import CompareSettings, SampleLog, run_compare
from tokred.errors import ConfigError, UnknownNameError

pytestmark = pytest.mark.integration

ROW_FIELDS = {
    "strategy",
    "accuracy",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "agreement",
    "mcnemar_p",
    "relative_flops",
    "prefill_flops",
    "prefill_latency_s",
    "decode_latency_s",
    "kv_cache_bytes",
    "visual_in",
    "visual_into_llm",
    "mean_tokens_per_layer",
    "accuracy_by_type",
    "peak_memory_bytes",
}


def settings(**kw) -> CompareSettings:
    base = {"model": "tiny", "strategies": ["none"], "limit": 6, "batch_size": 3, "timing_repeats": 1}
    return CompareSettings(**{**base, **kw})


def test_baseline_row_has_every_field():
    result = run_compare(settings())
    (row,) = result.rows
    assert ROW_FIELDS <= set(row)
    assert row["strategy"] == "none" and row["n"] == 6
    assert row["relative_flops"] == 1.0 and row["agreement"] == 1.0
    assert row["accuracy_ci_low"] <= row["accuracy"] <= row["accuracy_ci_high"]
    assert row["kv_cache_bytes"] > 0 and row["prefill_latency_s"] > 0


def test_resume_after_interruption(tmp_path):
    full = run_compare(settings(output=tmp_path / "full"))
    log = tmp_path / "cut" / "samples.jsonl"
    run_compare(settings(output=tmp_path / "cut"))
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # header, 2 records, a torn line
    seen: list[int] = []
    resumed = run_compare(settings(output=tmp_path / "cut"), progress=lambda label, done, total: seen.append(total))
    assert seen and max(seen) == 4  # only the 4 missing samples are evaluated again
    key = lambda recs: sorted((r["id"], r["prediction"]) for r in recs)  # noqa: E731
    assert key(resumed.records) == key(full.records)
    assert resumed.rows[0]["n"] == 6


def test_resume_with_other_settings_is_refused(tmp_path):
    run_compare(settings(output=tmp_path))
    with pytest.raises(ConfigError, match="other settings"):
        SampleLog(tmp_path, {"model": "something else"})


def test_unknown_strategy_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean: fastv"):
        run_compare(settings(strategies=["fastV"]))


def test_option_for_absent_strategy_is_refused():
    with pytest.raises(ConfigError, match="not among the strategies"):
        run_compare(settings(strategies=["none"], options={"fastv": {"keep_ratio": 0.5}}))


def test_bad_jsonl_lines_are_reported_and_others_evaluated(tmp_path):
    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    good = {"image": "a.png", "question": "What colour?", "answers": ["red"]}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"image": "missing.png", "question": "q", "answers": ["x"]}),
        json.dumps({**good, "id": "second"}),
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = run_compare(settings(dataset=str(path), limit=None))
    assert result.rows[0]["n"] == 2
    errors = result.info["dataset_errors"]
    assert len(errors) == 2 and "line 2" in errors[0] and "line 3" in errors[1]


@pytest.mark.parametrize("value", ["flops", "flops=2", "tokens=-1", "speed=3", "flops=abc"])
def test_bad_match_values(value):
    with pytest.raises(ConfigError):
        parse_match(value)


def test_strategy_lists_accept_commas_and_repeats():
    assert parse_strategies(["aim,fastv", "random"]) == ["aim", "fastv", "random"]
    assert parse_strategies(["aim@keep_ratios=[0.5,0.25],fastv@keep_ratio=0.2"]) == [
        "aim@keep_ratios=[0.5,0.25]",
        "fastv@keep_ratio=0.2",
    ]


def test_a_strategy_given_twice_is_refused_not_merged():
    with pytest.raises(ConfigError, match="given twice"):
        parse_strategies(["aim,fastv", "aim"])
    with pytest.raises(ConfigError, match="same configuration"):
        run_compare(settings(strategies=["fastv", "fastv@keep_ratio=0.5"]))  # 0.5 is fastv's default


def test_cli_json_and_csv(tmp_path):
    runner = CliRunner()
    args = ["compare", "--model", "tiny", "-s", "none", "--limit", "3", "--timing-repeats", "1"]
    out = runner.invoke(app, [*args, "--format", "json", "--output", str(tmp_path), "--plot"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert ROW_FIELDS <= set(data["rows"][0])
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert (tmp_path / "summary.json").exists() and (tmp_path / "samples.jsonl").exists()
    csv_out = runner.invoke(app, [*args, "--format", "csv", "--output", str(tmp_path)])
    assert csv_out.exit_code == 0 and csv_out.stdout.splitlines()[0].startswith("strategy,")


def test_cli_unreachable_budget_is_evaluated_nearest_and_flagged():
    runner = CliRunner()
    args = ["compare", "--model", "tiny", "-s", "pooling", "--limit", "2", "--match", "flops=0.5", "--format", "json"]
    out = runner.invoke(app, [*args, "--timing-repeats", "1"])
    assert out.exit_code == 0, out.output
    assert "warning: 'pooling' cannot reach flops=0.5 within 2%" in out.stderr
    row = json.loads(out.stdout)["rows"][1]
    assert row["on_target"] is False and row["budget_target"] == 0.5
    assert abs(row["relative_flops"] - 0.5) > 0.01  # reported at the budget it really reached


def test_settings_forbid_unknown_fields():
    with pytest.raises(Exception, match="extra"):
        CompareSettings(strategies=["none"], limits=3)  # type: ignore[call-arg]


def test_output_folder_type(tmp_path):
    assert isinstance(settings(output=tmp_path).output, Path)


def test_match_flops_puts_strategies_on_the_budget():
    result = run_compare(settings(strategies=["fastv", "random"], match=("flops", 0.8)))
    rows = {r["strategy"]: r for r in result.rows}
    for name in ("fastv", "random"):
        assert abs(rows[name]["relative_flops"] - 0.8) / 0.8 <= 0.02, rows[name]  # measured, not predicted
        assert rows[name]["knob_value"] is not None
    assert rows["none"]["relative_flops"] == 1.0


def test_reducing_strategies_shrink_tokens_flops_and_cache():
    result = run_compare(settings(strategies=["fastv", "pooling", "aim"]))
    rows = {r["strategy"]: r for r in result.rows}
    base = rows["none"]
    for name in ("fastv", "pooling", "aim"):
        assert rows[name]["relative_flops"] < 1.0
        assert rows[name]["mean_tokens_per_layer"] < base["mean_tokens_per_layer"]
        assert rows[name]["kv_cache_bytes"] < base["kv_cache_bytes"]
        assert 0.0 <= rows[name]["agreement"] <= 1.0 and 0.0 <= rows[name]["mcnemar_p"] <= 1.0
    assert rows["pooling"]["visual_into_llm"] == base["visual_in"] / 4


def test_kept_patch_picture_is_written(tmp_path):
    result = run_compare(settings(strategies=["fastv", "pooling", "tome"], output=tmp_path, plot=True, limit=3))
    picture = Path(result.info["kept_patch_picture"])
    assert picture.exists() and picture.stat().st_size > 5000


def test_survival_depth_follows_kept_indices():
    import torch

    import tokred
    from tokred.plots import survival_depth
    from tokred.testing.models import tiny_model

    model, make_inputs = tiny_model("llava")
    inputs = make_inputs(batch=1, seed=0)
    layers = model.config.text_config.num_hidden_layers
    with tokred.patch(model, "fastv", layer=1, keep_ratio=0.25) as handle, torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    depth = survival_depth(handle.stats, inputs["input_ids"], model.config.image_token_id, 0, layers)
    full, kept_share = 1.0, 1 / layers  # a dropped patch is seen by layer 0 only
    values = sorted(set(round(d, 6) for d in depth))
    assert values == [round(kept_share, 6), full]
    assert sum(d == full for d in depth) == len(depth) // 4


def test_resume_reuses_records_when_strategies_change(tmp_path):
    run_compare(settings(strategies=["fastv"], output=tmp_path))
    seen: list[tuple[str, int]] = []
    result = run_compare(
        settings(strategies=["fastv", "random"], output=tmp_path),
        progress=lambda label, done, total: seen.append((label, total)),
    )
    assert {label for label, _ in seen} == {"random"}  # none and fastv come from the log
    assert {r["strategy"] for r in result.rows} == {"none", "fastv", "random"}
    other = run_compare(settings(strategies=["fastv"], options={"fastv": {"keep_ratio": 0.25}}, output=tmp_path))
    fastv = next(r for r in other.rows if r["strategy"] == "fastv")
    assert fastv["options"]["keep_ratio"] == 0.25 and fastv["n"] == 6  # new options: evaluated again, not mixed


def test_sweep_gives_a_row_per_strategy_and_budget_with_paired_tests():
    result = run_compare(settings(strategies=["fastv", "random"], match=("flops", [0.6, 0.8])))
    rows = {r["id"]: r for r in result.rows}
    assert set(rows) == {"none", "fastv flops=0.6", "random flops=0.6", "fastv flops=0.8", "random flops=0.8"}
    for target in (0.6, 0.8):
        for name in ("fastv", "random"):
            row = rows[f"{name} flops={target:g}"]
            assert row["budget_target"] == target and row["on_target"]
            assert abs(row["predicted_budget"] - target) / target <= 0.02
            assert abs(row["relative_flops"] - target) / target <= 0.05  # measured on a tiny model: coarse counts
            assert row["indistinguishable_from"] in (
                [],
                [f"{'random' if name == 'fastv' else 'fastv'} flops={target:g}"],
            )
    pairs = result.info["pairwise"]
    assert [(p["a"], p["b"]) for p in pairs] == [
        ("fastv flops=0.6", "random flops=0.6"),
        ("fastv flops=0.8", "random flops=0.8"),
    ]
    assert all(p["p_holm"] == p["p"] for p in pairs)  # one pair per budget
    assert "Holm" in result.info["paired_tests"]


def test_variants_are_rows_of_their_own_and_resume(tmp_path):
    specs = ["fastv@keep_ratio=0.25", "fastv@keep_ratio=0.75"]
    result = run_compare(settings(strategies=specs, output=tmp_path))
    rows = {r["strategy"]: r for r in result.rows}
    assert set(rows) == {"none", *specs}
    assert rows[specs[0]]["mean_tokens_per_layer"] < rows[specs[1]]["mean_tokens_per_layer"]
    assert rows[specs[0]]["indistinguishable_from"] in ([], [specs[1]])
    seen: list[str] = []
    run_compare(settings(strategies=specs, output=tmp_path), progress=lambda label, done, total: seen.append(label))
    assert seen == []  # every variant comes back from the log


def test_costs_throughput_memory_and_batch_table():
    result = run_compare(settings(strategies=["pooling"], batch_sizes=[1, 2]))
    for row in result.rows:
        assert row["throughput_samples_per_s"] > 0 and row["throughput_batch_size"] == 3
        assert row["peak_memory_bytes"] is None or row["peak_memory_bytes"] > 0
        assert row["peak_memory_method"]
    base, pooled = result.rows
    assert pooled["peak_memory_bytes"] < base["peak_memory_bytes"]  # fewer tokens, fewer activation bytes
    table = result.info["batch_latency"]
    assert sorted((e["id"], e["batch_size"]) for e in table) == [
        ("none", 1),
        ("none", 2),
        ("pooling", 1),
        ("pooling", 2),
    ]
    assert all(e["samples_per_s"] == pytest.approx(e["batch_size"] / e["latency_s"]) for e in table)


def test_cli_plain_progress_lines_and_batch_table(tmp_path, monkeypatch):
    monkeypatch.delenv("TOKRED_DISABLE_PROGRESS_BARS", raising=False)  # the transformers matrix sets it
    args = ["compare", "--model", "tiny", "-s", "fastv", "--limit", "4", "--batch-size", "2", "--timing-repeats", "1"]
    out = CliRunner().invoke(app, [*args, "--progress-every", "2", "--batch-sizes", "1,2"], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    lines = [line for line in out.stderr.splitlines() if line.startswith("compare: ")]
    assert lines == [f"compare: {label}: {n}/4 samples" for label in ("none", "fastv") for n in (2, 4)]
    assert "latency vs batch size" in out.stdout and "Holm" in out.stdout


def test_match_searches_mergers_inside_the_vision_tower():
    # ToMe merges in the tower: the prediction needs the tower depth and feature layer from the model's config
    result = run_compare(settings(strategies=["tome"], match=("flops", 0.6), limit=2, batch_size=2))
    row = {r["strategy"]: r for r in result.rows}["tome"]
    assert row["knob_value"] >= 1 and row["relative_flops"] < 1.0
    assert row["visual_into_llm"] < row["visual_in"]
