"""Unit tests of the shapes benchmark, the dataset loaders and answer scoring."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from tokred.eval import shapes
from tokred.eval.datasets import (
    Dataset,
    DatasetError,
    JsonlDataset,
    ShapesDataset,
    exact_match,
    load_dataset,
    normalize_answer,
)

# ---------------------------------------------------------------------------------------------- generator


def test_same_seed_gives_byte_identical_images_and_questions():
    for index in (0, 7, 1_000_003, 2_000_042):
        s1, q1 = shapes.item(index)
        s2, q2 = shapes.item(index)
        assert q1 == q2
        assert shapes.render(s1).tobytes() == shapes.render(s2).tobytes()
        assert shapes.scene_questions(s1) == shapes.scene_questions(s2)
        assert shapes.caption(s1) == shapes.caption(s2)


def test_pinned_item_does_not_drift():
    # Guards against silent changes of the generator, which would invalidate the trained weights and results.
    scene, q = shapes.item(shapes.SPLITS["test"][0])
    assert q == shapes.ShapesQuestion("What colour is the square?", "yellow", "colour", "colour")
    assert len(scene.objects) == 5
    assert scene.objects[0] == shapes.ShapeObject("triangle", "purple", 165.87, 127.49, 36.41, (133, 74, 179))
    digest = hashlib.sha256(shapes.render(scene).tobytes()).hexdigest()
    # Pillow's rasteriser is stable, but if a Pillow upgrade ever changes it, this is the line that tells you.
    assert digest == "1b9447b597301846f776e5fcdb973693776769f80d58d26dc330581dcfc17e4f"


def test_different_seed_gives_different_scenes():
    a = shapes.generate_scene(5, seed=1)
    b = shapes.generate_scene(5, seed=2)
    assert a != b


def test_splits_are_disjoint_index_ranges():
    ranges = [range(start, start + n) for start, n in shapes.SPLITS.values()]
    for i, r1 in enumerate(ranges):
        for r2 in ranges[i + 1 :]:
            assert r1.stop <= r2.start or r2.stop <= r1.start
    val, test = ShapesDataset("val", limit=30), ShapesDataset("test", limit=30)
    assert {s.id for s in val}.isdisjoint({s.id for s in test})


def test_unknown_split_is_an_error():
    with pytest.raises(DatasetError, match="unknown split"):
        load_dataset("shapes", split="nope")


def test_scene_geometry():
    for i in range(200):
        scene = shapes.generate_scene(i)
        assert 1 <= len(scene.objects) <= 6
        for o in scene.objects:
            assert 9 <= o.r <= 38
            assert o.r * 1.1 <= o.cx <= 224 - o.r * 1.1 and o.r * 1.1 <= o.cy <= 224 - o.r * 1.1
        for a in scene.objects:
            for b in scene.objects:
                if a is not b:
                    assert np.hypot(a.cx - b.cx, a.cy - b.cy) >= 1.1 * (a.r + b.r)


def test_small_objects_and_clutter_present():
    scenes = [shapes.generate_scene(i) for i in range(300)]
    radii = [o.r for s in scenes for o in s.objects]
    assert np.median(radii) < 20  # skewed small
    assert min(radii) < 11
    assert sum(len(s.objects) >= 5 for s in scenes) > 50


def test_questions_are_answerable_from_the_scene():
    for i in range(300):
        scene, q = shapes.item(i)
        objs = scene.objects
        assert q.answer in shapes.ANSWER_SETS[q.qtype]
        if q.qtype == "count" and q.template == "count:all":
            assert q.answer == str(len(objs))
        if q.qtype == "colour":
            shape = q.question.split()[-1].rstrip("?")
            (o,) = [o for o in objs if o.shape == shape]
            assert o.colour == q.answer
        if q.qtype == "shape":
            colour = q.question.split()[4]
            (o,) = [o for o in objs if o.colour == colour]
            assert o.shape == q.answer
        if q.qtype == "exists":
            words = q.question.rstrip("?").split()
            present = any(o.colour == words[3] and o.shape == words[4] for o in objs)
            assert (q.answer == "yes") == present


def test_question_types_cycle_and_answer_sets_are_covered():
    ds = ShapesDataset("test")
    qs = ds.questions()
    assert len(qs) == 1000
    assert Counter(q.qtype for q in qs) == {t: 200 for t in shapes.QTYPES}
    for t in shapes.QTYPES:
        produced = {q.answer for q in qs if q.qtype == t}
        assert produced <= set(shapes.ANSWER_SETS[t])
        if t != "count":
            assert produced == set(shapes.ANSWER_SETS[t])
    assert {str(i) for i in range(0, 7)} <= {q.answer for q in qs if q.qtype == "count"}


def test_chance_levels_are_computed_from_the_answers():
    qs = [
        shapes.ShapesQuestion("q", "red", "colour", "colour"),
        shapes.ShapesQuestion("q", "red", "colour", "colour"),
        shapes.ShapesQuestion("q", "blue", "colour", "colour"),
        shapes.ShapesQuestion("l", "left", "position", "position:lr"),
        shapes.ShapesQuestion("t", "above", "position", "position:tb"),
    ]
    ch = shapes.chance_levels(qs)
    assert ch["colour"]["majority"] == pytest.approx(2 / 3)
    assert ch["colour"]["uniform"] == pytest.approx(0.5)
    assert ch["position"]["majority"] == pytest.approx(1.0)  # one answer per option group
    assert set(ch) == {"colour", "position", "overall"}


def test_test_split_chance_levels_are_reported_and_sane():
    ch = ShapesDataset("test").chance_levels()
    for t in shapes.QTYPES:
        assert 0 < ch[t]["uniform"] <= ch[t]["majority"] < 0.6
    assert ch["overall"]["n"] == 1000


def test_patch_owners_match_objects():
    scene = shapes.generate_scene(3)
    owners = shapes.patch_owners(scene)
    assert owners.shape == (16, 16)
    assert set(np.unique(owners)) <= {-1, *range(len(scene.objects))}
    for i, o in enumerate(scene.objects):
        if o.r >= 20:  # a large object owns the patch under its centre
            assert owners[int(o.cy) // 14, int(o.cx) // 14] == i
    assert (owners == -1).mean() > 0.3


def test_caption_lists_every_object_with_its_side():
    scene = shapes.generate_scene(11)
    cap = shapes.caption(scene)
    assert cap.startswith(f"{len(scene.objects)} shape")
    for o in scene.objects:
        assert o.name in cap
    assert cap.count(",") == len(scene.objects) - 1


def test_scene_questions_are_distinct_and_capped():
    scene = shapes.generate_scene(21)
    qs = shapes.scene_questions(scene, max_per_type=3)
    assert len({q.question for q in qs}) == len(qs)
    assert max(Counter(q.qtype for q in qs).values()) <= 3


# ---------------------------------------------------------------------------------------------- datasets


def test_shapes_dataset_protocol_and_limit():
    ds = load_dataset("shapes", split="val", limit=7)
    assert isinstance(ds, Dataset)
    assert len(ds) == 7
    samples = list(ds)
    assert len(samples) == 7
    s = samples[0]
    assert isinstance(s.image, Image.Image) and s.image.size == (224, 224)
    assert s.qtype in shapes.QTYPES and len(s.answers) == 1 and s.id.startswith("shapes-")
    assert load_dataset("shapes:val", limit=7)[3].id == samples[3].id
    with pytest.raises(IndexError):
        ds[7]


def _write_jsonl(tmp_path, lines):
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "red.png")
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_loader_good_and_bad_lines(tmp_path):
    path = _write_jsonl(
        tmp_path,
        [
            json.dumps({"image": "red.png", "question": "What colour?", "answers": ["red"]}),
            "{not json",
            json.dumps({"image": "red.png", "question": "What colour?"}),
            json.dumps({"image": "missing.png", "question": "Q?", "answers": ["x"]}),
            "",
            json.dumps({"image": "red.png", "question": "Q?", "answers": []}),
            json.dumps(["a", "list"]),
            json.dumps({"image": "red.png", "question": "Colour?", "answers": "red", "qtype": "colour", "id": "x1"}),
        ],
    )
    ds = load_dataset(path)
    assert isinstance(ds, JsonlDataset)
    assert len(ds) == 2
    assert ds[1].id == "x1" and ds[1].answers == ["red"] and ds[1].qtype == "colour"
    assert ds[0].id == "line-1" and ds[0].qtype == "default" and ds[0].image.size == (32, 32)
    errs = {e.line: e.message for e in ds.errors}
    assert set(errs) == {2, 3, 4, 6, 7}
    assert "invalid JSON" in errs[2]
    assert "answers" in errs[3] and "missing" in errs[3]
    assert "image file not found" in errs[4]
    assert "non-empty list" in errs[6]
    assert "JSON object" in errs[7]
    assert str(ds.errors[0]).startswith("line 2:")


def test_jsonl_strict_raises_with_line_numbers(tmp_path):
    path = _write_jsonl(tmp_path, [json.dumps({"image": "red.png", "question": "Q?", "answers": ["a"]}), "oops"])
    with pytest.raises(DatasetError, match="line 2"):
        load_dataset(path, strict=True)


def test_jsonl_absolute_image_path_and_limit(tmp_path):
    img = tmp_path / "red.png"
    Image.new("RGB", (8, 8)).save(img)
    lines = [json.dumps({"image": str(img), "question": f"Q{i}?", "answers": ["a"]}) for i in range(5)]
    path = tmp_path / "sub.jsonl"
    path.write_text("\n".join(lines))
    assert len(load_dataset(path, limit=3)) == 3


def test_unknown_dataset_name():
    with pytest.raises(DatasetError, match="available: shapes"):
        load_dataset("no-such-dataset")


# ---------------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Red.", "red"),
        ("  The RED circle!  ", "red circle"),
        ("a square", "square"),
        ("Three", "3"),
        ("zero", "0"),
        ("3", "3"),
        ("Yes,", "yes"),
        ("2.5", "2.5"),
        ("left-hand", "left hand"),
        ("an   apple", "apple"),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match():
    assert exact_match("Two", ["2"])
    assert exact_match("2", ["two"])
    assert exact_match("The circle.", ["circle"])
    assert not exact_match("circles", ["circle"])
    assert exact_match("blue", ["red", "Blue"])
    assert not exact_match("", ["red"])


def test_runner_grid_comes_from_the_processed_image_size():
    """The grid a runner reports is the processor's output size over the patch size, not the tower config's
    resolution (the reference model's DINOv2 config says 518 px; its processor crops 224 px)."""
    from types import SimpleNamespace

    from tokred.eval.runner import HFRunner
    from tokred.testing.models import tiny_model

    model, _ = tiny_model("llava")  # tower: 32 px, patch 4
    crop = SimpleNamespace(do_center_crop=True, crop_size={"height": 24, "width": 16}, do_resize=False)
    assert HFRunner(model, SimpleNamespace(image_processor=crop)).image_grid == (6, 4)
    resize = SimpleNamespace(do_center_crop=False, do_resize=True, size=SimpleNamespace(height=16, width=16))
    assert HFRunner(model, SimpleNamespace(image_processor=resize)).image_grid == (4, 4)
    assert HFRunner(model, SimpleNamespace()).image_grid == (8, 8)  # no processor settings: the tower's own size


def test_runner_frame_grid_and_frame_size_kwargs():
    """Video frames may enter at their own resolution (the reference model: 112 px, 8 x 8 tokens a frame): the
    runner's frame grid follows ``frame_size``, the processor gets the size only for a batch of clips, and a batch
    mixing images and clips is refused (one processor call cannot size them differently)."""
    from types import SimpleNamespace

    import pytest

    from tokred.eval.datasets import Sample
    from tokred.eval.runner import HFRunner
    from tokred.testing.models import tiny_model

    model, _ = tiny_model("llava")  # tower: 32 px, patch 4
    proc = SimpleNamespace(image_processor=SimpleNamespace(do_center_crop=False, do_resize=False))
    assert HFRunner(model, proc).frame_grid == HFRunner(model, proc).image_grid == (8, 8)
    runner = HFRunner(model, proc, frame_size=16)
    assert runner.frame_grid == (4, 4) and runner.image_grid == (8, 8)
    image = Sample(None, "q", ["a"], "t", "i")  # type: ignore[arg-type]
    clip = Sample(None, "q", ["a"], "t", "c", [None, None])  # type: ignore[list-item]
    assert runner._sizes([image]) == {}
    assert runner._sizes([clip, clip]) == {"size": {"shortest_edge": 16}, "crop_size": {"height": 16, "width": 16}}
    assert HFRunner(model, proc)._sizes([clip]) == {}
    with pytest.raises(ValueError, match="mixes images and video"):
        runner._sizes([image, clip])
