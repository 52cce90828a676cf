"""The ``shapes`` benchmark: a deterministic synthetic visual-question set of coloured shapes.

Every scene is a 224x224 image of 1-6 non-overlapping circles, squares and triangles in six colours, most of
them small (the smallest span about 1.3 ViT patches of 14 px), on a lightly tinted grey background. Questions
have one-word answers and come in five types:

* ``colour`` -- "What colour is the circle?" (the shape is unique in the scene);
* ``shape`` -- "What shape is the red object?" (the colour is unique);
* ``count`` -- "How many shapes are there?", "How many red objects are there?", "How many circles are there?";
* ``position`` -- "Is the red circle left or right of the blue square?" / "... above or below ..." (centres
  more than 12 px apart along the asked axis);
* ``exists`` -- "Is there a red circle?" (yes/no balanced; 80 % of the "no" cases are hard negatives that
  share the colour or the shape with an object in the scene).

Everything derives from ``numpy.random.default_rng([seed, index, attempt])``, so the same ``(seed, index)``
gives byte-identical images and questions on every machine. Splits are fixed, disjoint index ranges (see
:data:`SPLITS`). The generator also exposes, per scene, which object owns each 14x14 patch (used to pre-align
the projector to word embeddings during training) and a dense caption.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "ANSWER_SETS",
    "CAPTION_PROMPT",
    "COLOURS",
    "DEFAULT_SEED",
    "IMAGE_SIZE",
    "PATCH_SIZE",
    "QTYPES",
    "SHAPES",
    "SPLITS",
    "ShapeObject",
    "ShapesQuestion",
    "Scene",
    "caption",
    "chance_levels",
    "generate_scene",
    "make_question",
    "patch_owners",
    "render",
    "scene_questions",
    "split_items",
]

IMAGE_SIZE = 224
PATCH_SIZE = 14
GRID = IMAGE_SIZE // PATCH_SIZE
DEFAULT_SEED = 20240607

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 220),
    "yellow": (235, 205, 35),
    "purple": (135, 60, 180),
    "orange": (245, 135, 25),
}
QTYPES: tuple[str, ...] = ("colour", "shape", "count", "position", "exists")
ANSWER_SETS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": tuple(str(i) for i in range(7)),
    "position": ("left", "right", "above", "below"),
    "exists": ("yes", "no"),
}
CAPTION_PROMPT = "List the shapes with their positions."

#: Split name -> (first index, number of items). Index ranges are disjoint, so no scene is shared.
SPLITS: dict[str, tuple[int, int]] = {
    "train": (0, 1_000_000),
    "val": (1_000_000, 500),
    "test": (2_000_000, 1_000),
}

_MIN_R, _MAX_R = 9.0, 38.0
_MARGIN = 4.0
_BOUND = 1.1  # bounding-circle radius / nominal radius (covers square corners and triangle vertices)
_POS_GAP = 12.0
_OWN_FRACTION = 0.25


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene.

    Attributes:
        shape: One of :data:`SHAPES`.
        colour: One of the keys of :data:`COLOURS`.
        cx: Centre x in pixels.
        cy: Centre y in pixels.
        r: Nominal radius in pixels (9-38).
        rgb: The jittered fill colour.
    """

    shape: str
    colour: str
    cx: float
    cy: float
    r: float
    rgb: tuple[int, int, int]

    @property
    def name(self) -> str:
        """``"red circle"``-style name."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A generated scene (the image is rendered on demand by :func:`render`).

    Attributes:
        seed: Benchmark seed.
        index: Item index (its split is given by the index range, see :data:`SPLITS`).
        background: Background RGB.
        objects: The objects, in generation order.
    """

    seed: int
    index: int
    background: tuple[int, int, int]
    objects: tuple[ShapeObject, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ShapesQuestion:
    """A question about a scene.

    Attributes:
        question: The question text.
        answer: The one-word gold answer.
        qtype: One of :data:`QTYPES`.
        template: The answer-option group (e.g. ``"position:lr"``, ``"count:colour"``); chance levels are
            computed per group because a question's wording can narrow its answer set.
    """

    question: str
    answer: str
    qtype: str
    template: str


def _rng(seed: int, index: int, attempt: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, index, attempt, salt])


def generate_scene(index: int, seed: int = DEFAULT_SEED, attempt: int = 0) -> Scene:
    """Generate the scene for ``(seed, index, attempt)`` deterministically.

    Args:
        index: Item index.
        seed: Benchmark seed.
        attempt: Re-draw counter, used when a scene cannot carry the requested question type.

    Returns:
        The scene (1-6 non-overlapping objects).
    """
    rng = _rng(seed, index, attempt)
    tint = rng.integers(-10, 11, size=3)
    base = int(rng.integers(200, 236))
    background = tuple(int(np.clip(base + t, 0, 255)) for t in tint)
    n_target = int(rng.integers(1, 7))
    objects: list[ShapeObject] = []
    tries = 0
    while len(objects) < n_target and tries < 200:
        tries += 1
        r = _MIN_R + (_MAX_R - _MIN_R) * float(rng.random()) ** 1.5
        b = r * _BOUND
        cx = float(rng.uniform(b + 1, IMAGE_SIZE - b - 1))
        cy = float(rng.uniform(b + 1, IMAGE_SIZE - b - 1))
        if any(math.hypot(cx - o.cx, cy - o.cy) < b + o.r * _BOUND + _MARGIN for o in objects):
            continue
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        jitter = rng.integers(-18, 19, size=3)
        rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter))
        objects.append(ShapeObject(shape, colour, round(cx, 2), round(cy, 2), round(r, 2), rgb))  # type: ignore[arg-type]
    return Scene(seed=seed, index=index, background=background, objects=tuple(objects))  # type: ignore[arg-type]


def _polygon(o: ShapeObject) -> list[tuple[float, float]]:
    if o.shape == "square":
        h = o.r * 0.75
        return [(o.cx - h, o.cy - h), (o.cx + h, o.cy - h), (o.cx + h, o.cy + h), (o.cx - h, o.cy + h)]
    rr = o.r * _BOUND
    return [(o.cx + rr * math.cos(a), o.cy + rr * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]


def _draw(draw: ImageDraw.ImageDraw, o: ShapeObject, fill: int | tuple[int, int, int]) -> None:
    if o.shape == "circle":
        draw.ellipse([o.cx - o.r, o.cy - o.r, o.cx + o.r, o.cy + o.r], fill=fill)
    else:
        draw.polygon(_polygon(o), fill=fill)


def render(scene: Scene) -> Image.Image:
    """Render a scene to a 224x224 RGB image (byte-identical for the same scene).

    Args:
        scene: The scene.

    Returns:
        The image.
    """
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), scene.background)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        _draw(draw, o, o.rgb)
    return img


def patch_owners(scene: Scene, min_fraction: float = _OWN_FRACTION) -> np.ndarray:
    """Which object owns each 14x14 patch.

    Args:
        scene: The scene.
        min_fraction: A patch belongs to an object when at least this fraction of its pixels is covered.

    Returns:
        ``int64`` array of shape ``(16, 16)`` (row-major, like the ViT patch order): the object's index in
        ``scene.objects``, or ``-1`` for background.
    """
    labels = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(labels)
    for i, o in enumerate(scene.objects):
        _draw(draw, o, i + 1)
    lab = np.asarray(labels, dtype=np.int64).reshape(GRID, PATCH_SIZE, GRID, PATCH_SIZE).transpose(0, 2, 1, 3)
    lab = lab.reshape(GRID, GRID, PATCH_SIZE * PATCH_SIZE)
    owners = np.full((GRID, GRID), -1, dtype=np.int64)
    need = min_fraction * PATCH_SIZE * PATCH_SIZE
    for i in range(len(scene.objects)):
        cover = (lab == i + 1).sum(-1)
        owners[cover >= need] = i  # two objects can share a patch; the later one wins
    return owners


def _side(o: ShapeObject) -> str:
    h = "left" if o.cx < IMAGE_SIZE / 2 else "right"
    v = "top" if o.cy < IMAGE_SIZE / 2 else "bottom"
    return f"{h} {v}"


def caption(scene: Scene) -> str:
    """Dense caption: ``"3 shapes: red circle left top, blue square right bottom, ..."`` (left to right).

    Args:
        scene: The scene.

    Returns:
        The caption (the answer to :data:`CAPTION_PROMPT`).
    """
    objs = sorted(scene.objects, key=lambda o: (o.cx, o.cy))
    n = len(objs)
    return f"{n} shape{'s' if n != 1 else ''}: " + ", ".join(f"{o.name} {_side(o)}" for o in objs)


def _unique(values: Sequence[str]) -> list[str]:
    c = Counter(values)
    return sorted(v for v, k in c.items() if k == 1)


def make_question(scene: Scene, qtype: str, rng: np.random.Generator) -> ShapesQuestion | None:
    """Draw one question of ``qtype`` about ``scene``, or ``None`` when the scene cannot carry it.

    Args:
        scene: The scene.
        qtype: One of :data:`QTYPES`.
        rng: Random generator (consumed).

    Returns:
        The question or ``None``.
    """
    objs = scene.objects
    if qtype == "colour":
        shapes = _unique([o.shape for o in objs])
        if not shapes:
            return None
        s = shapes[int(rng.integers(len(shapes)))]
        o = next(o for o in objs if o.shape == s)
        return ShapesQuestion(f"What colour is the {s}?", o.colour, "colour", "colour")
    if qtype == "shape":
        colours = _unique([o.colour for o in objs])
        if not colours:
            return None
        c = colours[int(rng.integers(len(colours)))]
        o = next(o for o in objs if o.colour == c)
        return ShapesQuestion(f"What shape is the {c} object?", o.shape, "shape", "shape")
    if qtype == "count":
        kind = int(rng.integers(3))
        if kind == 0:
            return ShapesQuestion("How many shapes are there?", str(len(objs)), "count", "count:all")
        if kind == 1:
            c = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            if rng.random() < 0.7 and objs:  # mostly ask about a colour that is present
                c = objs[int(rng.integers(len(objs)))].colour
            n = sum(o.colour == c for o in objs)
            return ShapesQuestion(f"How many {c} objects are there?", str(n), "count", "count:colour")
        s = SHAPES[int(rng.integers(len(SHAPES)))]
        if rng.random() < 0.7 and objs:
            s = objs[int(rng.integers(len(objs)))].shape
        n = sum(o.shape == s for o in objs)
        return ShapesQuestion(f"How many {s}s are there?", str(n), "count", "count:shape")
    if qtype == "position":
        names = _unique([o.name for o in objs])
        named = [o for o in objs if o.name in names]
        axis = "lr" if rng.random() < 0.5 else "tb"
        pairs = [
            (a, b)
            for a in named
            for b in named
            if a is not b and abs((a.cx - b.cx) if axis == "lr" else (a.cy - b.cy)) > _POS_GAP
        ]
        if not pairs:
            return None
        a, b = pairs[int(rng.integers(len(pairs)))]
        if axis == "lr":
            ans = "left" if a.cx < b.cx else "right"
            return ShapesQuestion(f"Is the {a.name} left or right of the {b.name}?", ans, "position", "position:lr")
        ans = "above" if a.cy < b.cy else "below"
        return ShapesQuestion(f"Is the {a.name} above or below the {b.name}?", ans, "position", "position:tb")
    if qtype == "exists":
        present = {(o.colour, o.shape) for o in objs}
        if rng.random() < 0.5 and objs:
            o = objs[int(rng.integers(len(objs)))]
            return ShapesQuestion(f"Is there a {o.colour} {o.shape}?", "yes", "exists", "exists")
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        hard = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)]
        pool = hard if hard and rng.random() < 0.8 else absent
        c, s = pool[int(rng.integers(len(pool)))]
        return ShapesQuestion(f"Is there a {c} {s}?", "no", "exists", "exists")
    raise ValueError(f"unknown question type {qtype!r}; expected one of {', '.join(QTYPES)}")


def scene_questions(scene: Scene, max_per_type: int = 3, salt: int = 1) -> list[ShapesQuestion]:
    """Up to ``max_per_type`` distinct questions of every type about one scene (for packed training).

    Args:
        scene: The scene.
        max_per_type: Questions per type at most.
        salt: Mixed into the seed, so training questions differ from the benchmark item's question.

    Returns:
        The questions, grouped by type in :data:`QTYPES` order.
    """
    rng = _rng(scene.seed, scene.index, 0, salt)
    out: list[ShapesQuestion] = []
    for qtype in QTYPES:
        seen: set[str] = set()
        for _ in range(max_per_type * 3):
            if len(seen) >= max_per_type:
                break
            q = make_question(scene, qtype, rng)
            if q is None:
                break
            if q.question not in seen:
                seen.add(q.question)
                out.append(q)
    return out


def split_items(split: str, seed: int = DEFAULT_SEED) -> tuple[int, int]:
    """Index range of a split.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        seed: Benchmark seed (the ranges do not depend on it; kept for symmetry).

    Returns:
        ``(first_index, count)``.
    """
    del seed
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return SPLITS[split]


def item(index: int, seed: int = DEFAULT_SEED) -> tuple[Scene, ShapesQuestion]:
    """The benchmark item at ``index``: its scene and its single question (type ``QTYPES[index % 5]``).

    Args:
        index: Item index.
        seed: Benchmark seed.

    Returns:
        ``(scene, question)``; the scene is re-drawn (``attempt`` + 1) until it can carry the question type.
    """
    qtype = QTYPES[index % len(QTYPES)]
    for attempt in range(100):
        scene = generate_scene(index, seed, attempt)
        q = make_question(scene, qtype, _rng(seed, index, attempt, 2))
        if q is not None:
            return scene, q
    raise RuntimeError(f"could not generate a {qtype} question for item {index}")  # pragma: no cover


def iter_split(
    split: str, seed: int = DEFAULT_SEED, limit: int | None = None
) -> Iterator[tuple[Scene, ShapesQuestion]]:
    """Iterate over ``(scene, question)`` items of a split.

    Args:
        split: Split name.
        seed: Benchmark seed.
        limit: Stop after this many items.

    Yields:
        ``(scene, question)`` pairs in index order.
    """
    start, count = split_items(split, seed)
    n = count if limit is None else min(limit, count)
    for i in range(start, start + n):
        yield item(i, seed)


def chance_levels(questions: Sequence[ShapesQuestion], qtypes: Sequence[str] = QTYPES) -> dict[str, dict[str, float]]:
    """Chance levels per question type, computed on the answers actually produced.

    ``majority`` is the accuracy of always giving the most frequent answer of each answer-option group (e.g. a
    "left or right" question is answered "left" or "right"; "how many red objects" has its own majority); it
    is the bar to beat. ``uniform`` is the accuracy of a uniform guess among the answers observed in each group.

    Args:
        questions: The questions of a split.
        qtypes: The question types, in report order (the video benchmark passes its own).

    Returns:
        ``{qtype: {"majority": p, "uniform": p, "n": count}}`` plus an ``"overall"`` entry (macro over types
        present for the two rates, total for ``n``).
    """
    by_type: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for q in questions:
        by_type[q.qtype][q.template][q.answer] += 1
    out: dict[str, dict[str, float]] = {}
    for qtype in qtypes:
        groups = by_type.get(qtype)
        if not groups:
            continue
        n = sum(sum(c.values()) for c in groups.values())
        maj = sum(max(c.values()) for c in groups.values()) / n
        uni = sum(sum(c.values()) / len(c) for c in groups.values()) / n
        out[qtype] = {"majority": maj, "uniform": uni, "n": float(n)}
    if out:
        out["overall"] = {
            "majority": float(np.mean([v["majority"] for v in out.values()])),
            "uniform": float(np.mean([v["uniform"] for v in out.values()])),
            "n": float(sum(v["n"] for v in out.values())),
        }
    return out
