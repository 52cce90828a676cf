"""Unit tests of the ``shapes-video`` benchmark: determinism, answers re-derived from the per-frame ground truth,
disjoint splits, chance levels and the dataset loader."""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
import pytest

from tokred.eval import shapes_video as sv
from tokred.eval.datasets import DatasetError, ShapesVideoDataset, dataset_hash, load_dataset
from tokred.eval.shapes import COLOURS, IMAGE_SIZE


def _identities(clip: sv.Clip) -> dict[tuple[str, float], list[tuple[int, object]]]:
    """Objects followed across frames by (shape, radius), from the per-frame states only: {id: [(frame, obj)]}."""
    seen: dict[tuple[str, float], list[tuple[int, object]]] = {}
    for t, state in enumerate(clip.states):
        for o in state:
            seen.setdefault((o.shape, o.r), []).append((t, o))
    return seen


def _independent_answer(clip: sv.Clip, q) -> str | None:  # noqa: ANN001
    """The answer to ``q`` computed from ``clip.states`` alone (None: the identities are ambiguous)."""
    ids = _identities(clip)
    if sum(len(s) for s in clip.states) != sum(len(v) for v in ids.values()) or any(
        len({t for t, _ in v}) != len(v) for v in ids.values()
    ):
        return None  # two objects share shape and radius: cannot follow them without the tracks
    last = clip.frames - 1
    if q.qtype in ("appear", "disappear"):
        hits = [v for v in ids.values() if (v[0][0] > 0 if q.qtype == "appear" else v[-1][0] < last)]
        assert len(hits) == 1, q
        t, o = hits[0][0] if q.qtype == "appear" else hits[0][-1]
        return o.shape if q.template.endswith("shape") else o.colour
    if q.qtype == "direction":
        colour = re.match(r"Which way did the (\w+) object move\?", q.question).group(1)
        hits = [v for v in ids.values() if any(o.colour == colour for _, o in v)]
        assert len(hits) == 1 and all(o.colour == colour for _, o in hits[0])
        (_, a), (_, b) = hits[0][0], hits[0][-1]
        dx, dy = b.cx - a.cx, b.cy - a.cy
        assert max(abs(dx), abs(dy)) >= 23.9 and min(abs(dx), abs(dy)) <= max(abs(dx), abs(dy)) / 3 + 0.1
        return ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
    if q.qtype == "colour":
        shape, when = re.match(r"What colour is the (\w+) at the (end|start)\?", q.question).groups()
        hits = [v for v in ids.values() if v[0][1].shape == shape]
        assert len(hits) == 1
        return (hits[0][-1] if when == "end" else hits[0][0])[1].colour
    what = re.match(r"In how many frames is there an? (\w+)( object)?\?", q.question)
    word, is_colour = what.group(1), what.group(2) is not None
    return str(sum(any((o.colour if is_colour else o.shape) == word for o in st) for st in clip.states))


@pytest.mark.parametrize("split", ["test", "val"])
def test_every_answer_matches_an_independent_computation_from_the_frame_states(split):
    start, _ = sv.SPLITS[split]
    checked = 0
    for index in range(start, start + 250):
        clip, q = sv.item(index)
        assert q.qtype == sv.QTYPES[index % len(sv.QTYPES)]
        assert q.answer in sv.ANSWER_SETS[q.qtype]
        expected = _independent_answer(clip, q)
        if expected is not None:
            assert q.answer == expected, (index, q)
            checked += 1
    assert checked >= 240


def test_rendered_frames_show_every_object_in_its_state_colour():
    for index in (2_000_000, 2_000_001, 2_000_013, 1_000_007):
        clip, _ = sv.item(index)
        for t, frame in enumerate(sv.render_clip(clip)):
            pixels = np.asarray(frame)
            for o in clip.states[t]:
                assert tuple(pixels[int(o.cy), int(o.cx)]) == COLOURS[o.colour]
                assert o.r * 1.1 <= o.cx <= IMAGE_SIZE - o.r * 1.1 and o.r * 1.1 <= o.cy <= IMAGE_SIZE - o.r * 1.1


def test_objects_never_overlap_in_a_frame():
    for index in range(2_000_000, 2_000_200):
        clip = sv.item(index)[0]
        for state in clip.states:
            for i, a in enumerate(state):
                for b in state[i + 1 :]:
                    assert math.hypot(a.cx - b.cx, a.cy - b.cy) >= (a.r + b.r) * 1.1


def test_same_seed_gives_byte_identical_clips_and_questions():
    for index in (3, 1_000_004, 2_000_042):
        (c1, q1), (c2, q2) = sv.item(index), sv.item(index)
        assert q1 == q2 and c1 == c2
        assert [f.tobytes() for f in sv.render_clip(c1)] == [f.tobytes() for f in sv.render_clip(c2)]
    assert sv.generate_clip(5, seed=1) != sv.generate_clip(5, seed=2)


def test_pinned_item_does_not_drift():
    # Guards against silent changes of the generator, which would invalidate trained weights and results.
    clip, q = sv.item(sv.SPLITS["test"][0])
    assert (q.qtype, q.question, q.answer) == ("appear", "Which shape appeared?", "circle")
    assert clip.frames == 8 and [len(s) for s in clip.states] == [3, 3, 2, 3, 3, 3, 3, 3]
    digest = hashlib.sha256(b"".join(f.tobytes() for f in sv.render_clip(clip))).hexdigest()
    assert digest == "8b0e02a0c037e318f0f83c47891fcb78941795f4602ae10f6982def026d5b528"


def test_frames_option_makes_longer_clips_and_is_bounded():
    clip, q = sv.item(2_000_004, frames=16)
    assert clip.frames == 16 and len(clip.states) == 16 and q.qtype == "frames"
    assert 0 <= int(q.answer) <= 16
    for bad in (7, 33):
        with pytest.raises(ValueError, match="outside 8..32"):
            sv.generate_clip(0, frames=bad)


def test_splits_are_disjoint_index_ranges_and_ids():
    ranges = sorted((start, start + n) for start, n in sv.SPLITS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    val, test = ShapesVideoDataset("val", limit=20), ShapesVideoDataset("test", limit=20)
    assert {val.item(i)[0].index for i in range(20)}.isdisjoint({test.item(i)[0].index for i in range(20)})
    assert dataset_hash(val) != dataset_hash(test)


def test_chance_levels_cover_every_type():
    levels = ShapesVideoDataset("test", limit=200).chance_levels()
    assert set(levels) == {*sv.QTYPES, "overall"}
    for qtype in sv.QTYPES:
        assert 0 < levels[qtype]["uniform"] <= levels[qtype]["majority"] < 0.5
        assert levels[qtype]["n"] == 40


def test_load_dataset_resolves_shapes_video():
    ds = load_dataset("shapes-video", limit=3)
    assert isinstance(ds, ShapesVideoDataset) and ds.name == "shapes-video:test" and len(ds) == 3
    sample = ds[0]
    assert sample.frames is not None and len(sample.frames) == 8 and sample.image is sample.frames[0]
    assert sample.id == "shapes-video-2000000" and sample.answers == [sv.item(2_000_000)[1].answer]
    assert load_dataset("shapes-video:val", limit=1).name == "shapes-video:val"
    with pytest.raises(DatasetError, match="dataset shapes-video: unknown split 'dev'"):
        load_dataset("shapes-video:dev")


def test_compare_frames_option_is_validated_and_reaches_the_dataset():
    """``tokred compare --frames N`` sizes the shapes-video clips (8-32) and is refused for image datasets."""
    from tokred.cli.compare import settings_from_flags
    from tokred.errors import ConfigError
    from tokred.eval.datasets import load_dataset

    clip = load_dataset("shapes-video", limit=1, frames=32)[0]
    assert clip.frames is not None and len(clip.frames) == 32
    assert len(load_dataset("shapes-video", limit=1)[0].frames or []) == sv.DEFAULT_FRAMES
    assert settings_from_flags(dataset="shapes-video", frames=16).frames == 16
    with pytest.raises(ConfigError, match="--frames 16: applies to --dataset shapes-video only"):
        settings_from_flags(dataset="shapes", frames=16)
    with pytest.raises(ConfigError, match="--frames 40: out of range"):
        settings_from_flags(dataset="shapes-video", frames=40)
