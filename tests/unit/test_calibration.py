"""Recipe files, the calibrate command's bad inputs, and the pure ops of FitPrune and PrefixKV."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokred.calibration import cache_path, load_recipe, make_recipe, save_recipe
from tokred.cli import main
from tokred.cli.calibrate import parse_budget
from tokred.errors import ConfigError
from tokred.ops.fitprune import fit_deletions, intersect_lowest
from tokred.ops.kv import cutoff_evictions, kv_keep_index


def test_recipe_round_trip_and_checks(tmp_path):
    recipe = make_recipe("prefixkv", "m", 3, {"retention": 0.5}, per_layer=[1.0, 0.5, 0.2])
    path = save_recipe(tmp_path / "a" / "r.json", recipe)
    assert json.loads(path.read_text())["format"] == "tokred-recipe"
    assert load_recipe(path, "prefixkv", 3)["per_layer"] == [1.0, 0.5, 0.2]
    with pytest.raises(ConfigError, match="3 decoder layers"):
        load_recipe(path, "prefixkv", 4)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_recipe(tmp_path / "missing.json", "prefixkv")
    assert cache_path("fitprune", "/x/y/model", "flops", 0.5).name == "flops-0.5.json"
    assert cache_path("fitprune", "/a/model", "flops", 0.5) != cache_path("fitprune", "/b/model", "flops", 0.5)


@pytest.mark.parametrize(
    ("method", "budget", "message"),
    [
        ("fitprune", "retention=0.5", "fitprune takes --budget flops="),
        ("prefixkv", "flops=0.5", "prefixkv takes --budget retention="),
        ("fitprune", "flops=1.5", "must be in (0, 1]"),
        ("fitprune", "flops=abc", "is not a number"),
        ("vtc", "flops=0.5", "unknown method"),
    ],
)
def test_bad_budget_is_one_error_line_before_loading(method, budget, message, capsys):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("]", r"\]")):
        parse_budget(method, budget)
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", method, "--budget", budget, "--model", "tiny"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error:")


def test_fit_deletions_is_the_largest_allowed_count():
    s = torch.tensor([0.1, 0.4, 0.2, 0.3])
    assert fit_deletions(s, full_sum=1.0, alpha=0.0) == 0
    assert fit_deletions(s, full_sum=1.0, alpha=0.35) == 2
    assert fit_deletions(s, full_sum=1.0, alpha=1.0) == 4
    assert fit_deletions(s, full_sum=2.0, alpha=0.1) == 0  # already below the full model's sum
    got = intersect_lowest(torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([3.0, 0.0, 1.0, 2.0]), 2, 2)
    assert got.tolist() == [1]


@settings(max_examples=40, deadline=None)
@given(st.integers(6, 30), st.floats(0.05, 0.95), st.integers(1, 4), st.integers(0, 2**16))
def test_cutoff_evictions_hit_the_target(n, retention, layers, seed):
    g = torch.Generator().manual_seed(seed)
    imp = [torch.rand(n, generator=g) ** 3 for _ in range(layers)]
    target = (1 - retention) * n * layers
    ev = cutoff_evictions(imp, target, protect=5)
    assert all(0 <= e <= max(0, n - 5) for e in ev)
    assert sum(ev) <= target + 1e-9


@settings(max_examples=40, deadline=None)
@given(st.integers(8, 20), st.integers(0, 5), st.integers(0, 2**16))
def test_kv_keep_index_is_rectangular_keeps_protected_and_the_best(n, pad, seed):
    g = torch.Generator().manual_seed(seed)
    imp = torch.rand(2, n, generator=g)
    real = torch.ones(2, n, dtype=torch.bool)
    real[1, :pad] = False  # left padding in row 1
    counts = real.sum(1)
    keep = torch.maximum((counts.float() * 0.6).round().long(), counts.clamp(max=5))  # as the compressor counts
    idx = kv_keep_index(imp, real, keep, first=4, last=1)
    assert idx.shape == (2, int(keep.max()))
    for b in range(2):
        row = idx[b]
        assert torch.equal(row, row.sort().values) and row.unique().numel() == row.numel()
        positions = torch.nonzero(real[b])[:, 0]
        kept_real = row[real[b, row]]
        assert kept_real.numel() == int(keep[b])
        assert set(positions[:4].tolist()) | {int(positions[-1])} <= set(kept_real.tolist())
        middle = positions[4:-1]
        chosen = torch.isin(middle, kept_real)
        if chosen.any() and (~chosen).any():
            assert float(imp[b, middle[chosen]].min()) >= float(imp[b, middle[~chosen]].max())
