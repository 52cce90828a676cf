"""Pieces of ``tokred compare`` 2.0 that need no model: variant specs, paired tests, the frontier, peak memory."""

from __future__ import annotations

import pytest

import tokred
from tokred.compare import CompareSettings, Variant, build_variants, pairwise_tests, parse_spec, peak_from_trace
from tokred.errors import ConfigError
from tokred.plots import pareto_front


def test_spec_syntax():
    assert parse_spec("fastv") == ("fastv", {})
    assert parse_spec("fastv@keep_ratio=0.25") == ("fastv", {"keep_ratio": 0.25})
    assert parse_spec("aim@l1=3@l2=6@mode=drop") == ("aim", {"l1": 3, "l2": 6, "mode": "drop"})
    for bad, message in (("@keep_ratio=1", "no strategy name"), ("fastv@keep_ratio", "key=value"),
                         ("fastv@=3", "key=value"), ("fastv@a=1@a=2", "twice")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            parse_spec(bad)


def test_variants_are_separate_points_with_their_options():
    settings = CompareSettings(
        strategies=["fastv@keep_ratio=0.25", "fastv@keep_ratio=0.75"], options={"fastv": {"layer": 1}}
    )
    variants = build_variants(settings)
    assert [v.label for v in variants] == ["none", "fastv@keep_ratio=0.25", "fastv@keep_ratio=0.75"]
    assert [v.strategy.config.keep_ratio for v in variants[1:]] == [0.25, 0.75]
    assert all(v.strategy.config.layer == 1 for v in variants[1:])  # -o applies to every variant of the name


def test_variant_option_errors_name_the_variant():
    with pytest.raises(ConfigError, match="-s fastv@keep_ratio=2"):
        build_variants(CompareSettings(strategies=["fastv@keep_ratio=2"]))
    with pytest.raises(ConfigError, match="set it once"):
        build_variants(CompareSettings(strategies=["fastv@layer=1"], options={"fastv": {"layer": 2}}))


def test_match_settings_accept_one_or_several_targets():
    assert CompareSettings(match=("flops", 0.25)).match == ("flops", [0.25])
    assert CompareSettings(match=("flops", [0.15, 0.4])).match == ("flops", [0.15, 0.4])
    for bad in (("flops", [0.2, 0.2]), ("flops", [0.5, 1.5]), ("tokens", [-1.0]), ("flops", [])):
        with pytest.raises(ValueError):
            CompareSettings(match=bad)


def _point(label: str, target: float | None, on_target: bool = True) -> Variant:
    return Variant(label, tokred.create_strategy(label.split("@")[0]), 0.5, target, target, on_target, "flops")


def _records(correct: list[int]) -> dict[str, dict[str, object]]:
    return {str(i): {"correct": bool(c)} for i, c in enumerate(correct)}


def test_pairwise_tests_are_per_budget_holm_corrected_and_skip_off_target():
    base = Variant("none", tokred.create_strategy("none"))
    points = [base, _point("fastv", 0.25), _point("random", 0.25), _point("pooling", 0.25, on_target=False),
              _point("fastv", 0.5), _point("random", 0.5)]  # fmt: skip
    strong, weak = [1] * 20, [0] * 12 + [1] * 8
    recs = {base.id: _records(strong), "fastv flops=0.25": _records(strong), "random flops=0.25": _records(weak),
            "pooling flops=0.25": _records(weak), "fastv flops=0.5": _records(strong),
            "random flops=0.5": _records(strong)}  # fmt: skip
    tests = pairwise_tests(points, recs)
    assert [(t["budget"], t["a"], t["b"]) for t in tests] == [
        (0.25, "fastv flops=0.25", "random flops=0.25"),
        (0.5, "fastv flops=0.5", "random flops=0.5"),
    ]
    low, high = tests
    assert (low["only_a"], low["only_b"], low["n"]) == (12, 0, 20)
    assert low["p"] == pytest.approx(2 * 0.5**12) and low["p_holm"] == low["p"]  # one pair per budget: m = 1
    assert not low["indistinguishable"] and high["indistinguishable"] and high["p"] == 1.0


def test_pareto_front_keeps_only_undominated_points():
    rows = [{"strategy": s, "accuracy": a, "relative_flops": f} for s, a, f in
            [("none", 0.9, 1.0), ("a", 0.8, 0.25), ("b", 0.7, 0.3), ("c", 0.85, 0.4), ("d", 0.6, 0.15),
             ("e", 0.85, 0.5)]]  # fmt: skip
    assert [r["strategy"] for r in pareto_front(rows, "relative_flops")] == ["d", "a", "c", "none"]


def test_peak_from_trace_follows_allocations_and_frees_in_time_order():
    def mem(ts: float, nbytes: int, device: int = 0) -> dict[str, object]:
        return {"name": "[memory]", "ts": ts, "args": {"Bytes": nbytes, "Device Type": device}}

    events = [mem(3, -4), mem(1, 4), mem(2, 8), mem(4, 2), {"name": "aten::mm", "ts": 2.5}, mem(2.2, 100, device=1)]
    assert peak_from_trace(events) == 12  # 4 then 4+8; the CUDA event (device 1) and the op are ignored
    assert peak_from_trace([]) == 0


class _FakeRunner:
    """What the budget prediction reads of a runner: the model's config and one image's token grid."""

    def __init__(self, grid, vision_layers=None, feature_layer=-2):
        from types import SimpleNamespace

        vision = SimpleNamespace(num_hidden_layers=vision_layers) if vision_layers else None
        self.model = SimpleNamespace(config=SimpleNamespace(vision_config=vision, vision_feature_layer=feature_layer))
        self.image_grid = grid
        self.frame_grid = (2, 2)


def test_budget_prediction_counts_frames_and_tower_depth():
    from tokred.compare import _visual_shape

    shape = _visual_shape(_FakeRunner((4, 4), vision_layers=6), 8 * 16)  # a sample of 8 frames of 16 tokens
    expected = {"visual_tokens": 16, "images": 8, "grid": (4, 4), "vision_layers": 6, "feature_layer": -2}
    assert shape == {**expected, "video": False}
    assert _visual_shape(_FakeRunner((4, 4)), 16)["images"] == 1
    assert _visual_shape(_FakeRunner(None), 30)["visual_tokens"] == 30  # no grid: one image of every token
    video = _visual_shape(_FakeRunner((4, 4)), 8 * 4, video=True)  # a clip's frames use the runner's frame grid
    assert (video["images"], video["visual_tokens"], video["grid"], video["video"]) == (8, 4, (2, 2), True)


def test_flops_matching_on_a_clip_follows_the_video_variant():
    """`--match flops` on clips predicts AIM's video variant (merge per frame to 25 %), the variant that runs."""
    from transformers import LlamaConfig

    from tokred.budget import predict_tokens_per_layer, relative_flops_measure

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4)
    aim = tokred.create_strategy("aim")
    shape = {"text_tokens": 20, "visual_tokens": 64, "images": 8, "grid": (8, 8)}
    as_clip = relative_flops_measure(cfg, video=True, **shape)(aim)
    as_images = relative_flops_measure(cfg, **shape)(aim)
    assert as_clip != as_images
    tokens = predict_tokens_per_layer(aim, num_layers=8, video=True, **shape)
    assert len(tokens) == 8 and tokens[-1] < tokens[0]  # merged per frame, then pruned inside the LLM
    from tokred.flops import prefill_flops

    base = prefill_flops(cfg, [20 + 8 * 64] * 8, "llm-viewer")
    assert abs(as_clip - prefill_flops(cfg, tokens, "llm-viewer") / base) < 1e-12


def test_a_temporal_merger_is_predicted_over_the_whole_clip():
    from tokred.budget import visual_after_merge
    from tokred.ops.temporal import evs_keep_count

    evs = tokred.create_strategy("evs", rate=0.75)
    # frames entering as a sequence of images form one clip; frame 0 kept whole, the rest share the budget
    assert visual_after_merge(evs, 16, images=8, grid=(4, 4)) == evs_keep_count(8, 16, 0.75) == 32
    assert visual_after_merge(evs, 16, images=1, grid=(4, 4)) == 16  # one frame: nothing to compare with


def test_knob_search_stays_inside_open_bounds():
    from tokred.budget import _knob_bounds

    lo, hi, is_int = _knob_bounds(tokred.create_strategy("evs"), "rate")  # 0 <= rate < 1
    assert not is_int and lo == 0.0 and hi < 1.0
    tokred.create_strategy("evs", rate=hi)  # the upper end of the search is a valid option


def test_reference_model_label_names_its_weights():
    """A result and its sample log say which trained weights produced them (their recorded sha256)."""
    import hashlib
    from pathlib import Path

    from tokred.compare import model_label

    weights = Path(tokred.__file__).parent / "eval" / "weights" / "reference.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert model_label(None) == model_label("reference") == f"reference (DINOv2-S + SmolLM2-135M; weights {sha[:12]})"
    assert model_label("tiny") == "tiny-llava"
    video = weights.with_name("reference-video.safetensors")  # the video-trained weights, named by their own sha256
    video_sha = hashlib.sha256(video.read_bytes()).hexdigest()
    assert model_label("reference-video").endswith(f"video-trained weights; weights {video_sha[:12]})")


def test_reference_video_model_is_refused_when_its_weights_are_absent(monkeypatch):
    """`--model reference-video` names the missing files and the model that works, before anything loads."""
    import pytest

    from tokred import compare
    from tokred.errors import ConfigError

    monkeypatch.setattr(compare, "reference_weights_tag", lambda name="reference": None)
    with pytest.raises(ConfigError, match=r"reference-video\.safetensors.*use --model reference"):
        compare.check_model("reference-video")
    compare.check_model("reference")  # the released model needs no record to be named
