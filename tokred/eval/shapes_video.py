"""The ``shapes-video`` benchmark: deterministic clips of coloured shapes that move, appear, disappear and recolour.

A clip is ``T`` frames (8 by default, 8-16 allowed) of 224x224 pixels drawn like the ``shapes`` scenes
(`tokred.eval.shapes`): 1-4 objects on a lightly tinted grey background. Each object is a *track*: a shape, a
radius, a start position and a constant velocity (or none), the frames it is visible in (it may enter after the first
frame or leave before the last) and, for some, a colour change at one frame. Tracks never overlap in any frame and stay
inside the picture. Questions have one-word answers and come in five types:

* ``appear`` -- "Which shape appeared?" / "What colour is the shape that appeared?" (exactly one track enters after
  the first frame);
* ``disappear`` -- "Which shape disappeared?" / "What colour is the shape that disappeared?" (exactly one track leaves
  before the last frame);
* ``direction`` -- "Which way did the red object move?" (left, right, up, down; the colour is unique and never
  changes, the motion is at least 24 px along one axis and at most a third of that across);
* ``colour`` -- "What colour is the circle at the end?" / "... at the start?" (the shape is unique; most asked-about
  tracks change colour during the clip);
* ``frames`` -- "In how many frames is there a circle?" / "... a red object?" (0 to ``T``).

Only the per-frame state (:attr:`Clip.states`) defines the answers; the tracks are how it is generated. Everything
derives from ``numpy.random.default_rng([seed, index, attempt, salt])``, so the same ``(seed, index, frames)`` gives
byte-identical frames and questions on every machine. Splits are disjoint index ranges (:data:`SPLITS`); the item at
index ``i`` asks a question of type ``QTYPES[i % 5]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tokred.eval import shapes
from tokred.eval.shapes import COLOURS, IMAGE_SIZE, SHAPES, ShapeObject, ShapesQuestion

__all__ = [
    "ANSWER_SETS",
    "DEFAULT_FRAMES",
    "DEFAULT_SEED",
    "QTYPES",
    "SPLITS",
    "Clip",
    "Track",
    "chance_levels",
    "generate_clip",
    "item",
    "make_question",
    "render_clip",
    "render_frame",
    "split_items",
]

DEFAULT_SEED = 20261201
DEFAULT_FRAMES = 8
MIN_FRAMES, MAX_FRAMES = 8, 32
QTYPES: tuple[str, ...] = ("appear", "disappear", "direction", "colour", "frames")
ANSWER_SETS: dict[str, tuple[str, ...]] = {
    "appear": SHAPES + tuple(COLOURS),
    "disappear": SHAPES + tuple(COLOURS),
    "direction": ("left", "right", "up", "down"),
    "colour": tuple(COLOURS),
    "frames": tuple(str(i) for i in range(MAX_FRAMES + 1)),
}

#: Split name -> (first index, number of items). Index ranges are disjoint, so no clip is shared.
SPLITS: dict[str, tuple[int, int]] = {
    "train": (0, 1_000_000),
    "val": (1_000_000, 500),
    "test": (2_000_000, 1_000),
}

_MIN_R, _MAX_R = 10.0, 30.0
_BOUND = 1.1  # bounding-circle radius / nominal radius (as in shapes)
_GAP = 4.0
_MIN_MOVE = 24.0  # px along the dominant axis for a direction question


@dataclass(frozen=True)
class Track:
    """One object of a clip over time.

    Attributes:
        shape: One of :data:`~tokred.eval.shapes.SHAPES`.
        colour: Colour name in the frames before ``change`` (all frames when ``change`` is ``None``).
        colour_after: Colour name from frame ``change`` on.
        change: Frame at which the colour changes, or ``None``.
        r: Nominal radius in pixels.
        x0: Centre x at frame 0 (the track's position is extrapolated for frames it is not visible in).
        y0: Centre y at frame 0.
        vx: Motion in x per frame (px).
        vy: Motion in y per frame (px).
        first: First visible frame.
        last: Last visible frame (inclusive).
    """

    shape: str
    colour: str
    colour_after: str
    change: int | None
    r: float
    x0: float
    y0: float
    vx: float
    vy: float
    first: int
    last: int

    def centre(self, t: int) -> tuple[float, float]:
        """Centre at frame ``t``."""
        return self.x0 + self.vx * t, self.y0 + self.vy * t

    def colour_at(self, t: int) -> str:
        """Colour name at frame ``t``."""
        return self.colour_after if self.change is not None and t >= self.change else self.colour


@dataclass(frozen=True)
class Clip:
    """A generated clip (frames are rendered on demand by :func:`render_clip`).

    Attributes:
        seed: Benchmark seed.
        index: Item index.
        frames: Number of frames ``T``.
        background: Background RGB.
        tracks: The objects over time.
        states: Per frame, the visible objects (position, radius, colour at that frame): the ground truth every
            answer is computed from.
    """

    seed: int
    index: int
    frames: int
    background: tuple[int, int, int]
    tracks: tuple[Track, ...]
    states: tuple[tuple[ShapeObject, ...], ...]


def _rng(seed: int, index: int, attempt: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, index, attempt, salt])


def _event_frame(rng: np.random.Generator, frames: int) -> int:
    return int(rng.integers(2, frames - 1))  # an event never falls on the first two or the last frame


def _draw_track(rng: np.random.Generator, frames: int, role: str) -> Track:
    """One random track; ``role`` is ``"appear"``, ``"disappear"`` or ``"plain"``."""
    r = _MIN_R + (_MAX_R - _MIN_R) * float(rng.random()) ** 1.5
    moves = rng.random() < 0.65
    speed = float(rng.uniform(_MIN_MOVE + 6, 90.0)) / (frames - 1) if moves else 0.0
    angle = [0.0, math.pi, math.pi / 2, -math.pi / 2][int(rng.integers(4))] + float(rng.uniform(-0.25, 0.25))
    vx, vy = speed * math.cos(angle), speed * math.sin(angle)
    b = r * _BOUND + 1
    xs = [b - min(0.0, vx * (frames - 1)), IMAGE_SIZE - b - max(0.0, vx * (frames - 1))]
    ys = [b - min(0.0, vy * (frames - 1)), IMAGE_SIZE - b - max(0.0, vy * (frames - 1))]
    x0, y0 = float(rng.uniform(*xs)), float(rng.uniform(*ys))
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    change, after = None, colour
    if rng.random() < 0.35:
        change = _event_frame(rng, frames)
        after = list(c for c in COLOURS if c != colour)[int(rng.integers(len(COLOURS) - 1))]
    first = _event_frame(rng, frames) if role == "appear" else 0
    last = _event_frame(rng, frames) - 1 if role == "disappear" else frames - 1
    return Track(shape, colour, after, change, round(r, 2), round(x0, 2), round(y0, 2), vx, vy, first, last)


def _clash(a: Track, b: Track, frames: int) -> bool:
    """Whether two tracks come closer than their bounding circles (plus a gap) in a frame both are visible in."""
    for t in range(max(a.first, b.first), min(a.last, b.last) + 1):
        (ax, ay), (bx, by) = a.centre(t), b.centre(t)
        if math.hypot(ax - bx, ay - by) < (a.r + b.r) * _BOUND + _GAP:
            return True
    return False


def _state(track: Track, t: int) -> ShapeObject:
    cx, cy = track.centre(t)
    colour = track.colour_at(t)
    return ShapeObject(track.shape, colour, round(cx, 2), round(cy, 2), track.r, COLOURS[colour])


def generate_clip(index: int, seed: int = DEFAULT_SEED, frames: int = DEFAULT_FRAMES, attempt: int = 0) -> Clip:
    """Generate the clip for ``(seed, index, attempt)`` deterministically.

    Args:
        index: Item index.
        seed: Benchmark seed.
        frames: Number of frames (8-16).
        attempt: Re-draw counter, used when a clip cannot carry the requested question type.

    Returns:
        The clip (1-4 tracks; at most one appears and at most one disappears).
    """
    if not MIN_FRAMES <= frames <= MAX_FRAMES:
        raise ValueError(f"frames={frames} is outside {MIN_FRAMES}..{MAX_FRAMES}")
    rng = _rng(seed, index, attempt)
    tint = rng.integers(-10, 11, size=3)
    base = int(rng.integers(200, 236))
    background = tuple(int(np.clip(base + t, 0, 255)) for t in tint)
    roles = ["plain"] * int(rng.integers(1, 5))
    if rng.random() < 0.6:
        roles[0] = "appear"
    if len(roles) > 1 and rng.random() < 0.6:
        roles[-1] = "disappear"
    tracks: list[Track] = []
    for role in roles:
        for _ in range(50):
            cand = _draw_track(rng, frames, role)
            if not any(_clash(cand, o, frames) for o in tracks):
                tracks.append(cand)
                break
    states = tuple(tuple(_state(k, t) for k in tracks if k.first <= t <= k.last) for t in range(frames))
    return Clip(seed, index, frames, background, tuple(tracks), states)  # type: ignore[arg-type]


def render_frame(clip: Clip, t: int) -> Image.Image:
    """Render frame ``t`` of a clip to a 224x224 RGB image (byte-identical for the same clip)."""
    return shapes.render(shapes.Scene(clip.seed, clip.index, clip.background, clip.states[t]))


def render_clip(clip: Clip) -> list[Image.Image]:
    """Render every frame of a clip, in order."""
    return [render_frame(clip, t) for t in range(clip.frames)]


def _unique(values: Sequence[str]) -> list[str]:
    return sorted(v for v in set(values) if list(values).count(v) == 1)


def _event_question(clip: Clip, kind: str, rng: np.random.Generator) -> ShapesQuestion | None:
    """``appear`` / ``disappear``: exactly one track enters (leaves) during the clip."""
    movers = [k for k in clip.tracks if (k.first > 0 if kind == "appear" else k.last < clip.frames - 1)]
    if len(movers) != 1:
        return None
    k = movers[0]
    verb = "appeared" if kind == "appear" else "disappeared"
    if rng.random() < 0.5:
        return ShapesQuestion(f"Which shape {verb}?", k.shape, kind, f"{kind}:shape")
    t = k.first if kind == "appear" else k.last
    return ShapesQuestion(f"What colour is the shape that {verb}?", k.colour_at(t), kind, f"{kind}:colour")


def _direction(k: Track, frames: int) -> str | None:
    steps = k.last - k.first
    dx, dy = k.vx * steps, k.vy * steps
    if max(abs(dx), abs(dy)) < _MIN_MOVE or min(abs(dx), abs(dy)) > max(abs(dx), abs(dy)) / 3:
        return None
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _direction_question(clip: Clip, rng: np.random.Generator) -> ShapesQuestion | None:
    colours = [c for k in clip.tracks for c in {k.colour, k.colour_after}]
    fit = [k for k in clip.tracks if k.change is None and k.colour in _unique(colours)]
    fit = [k for k in fit if _direction(k, clip.frames) is not None]
    if not fit:
        return None
    k = fit[int(rng.integers(len(fit)))]
    ans = _direction(k, clip.frames)
    assert ans is not None
    return ShapesQuestion(f"Which way did the {k.colour} object move?", ans, "direction", "direction")


def _colour_question(clip: Clip, rng: np.random.Generator) -> ShapesQuestion | None:
    fit = [k for k in clip.tracks if k.shape in _unique([x.shape for x in clip.tracks])]
    if not fit:
        return None
    changing = [k for k in fit if k.change is not None and k.first < k.change <= k.last]
    pool = changing if changing and rng.random() < 0.8 else fit
    k = pool[int(rng.integers(len(pool)))]
    if rng.random() < 0.6:
        return ShapesQuestion(f"What colour is the {k.shape} at the end?", k.colour_at(k.last), "colour", "colour:end")
    return ShapesQuestion(f"What colour is the {k.shape} at the start?", k.colour_at(k.first), "colour", "colour:start")


def _frames_question(clip: Clip, rng: np.random.Generator) -> ShapesQuestion:
    """Mostly about the shape or colour of a track that is not visible throughout (so the answer is not ``T``)."""
    partial = [k for k in clip.tracks if k.first > 0 or k.last < clip.frames - 1 or k.change is not None]
    pick = partial if partial and rng.random() < 0.8 else list(clip.tracks)
    k = pick[int(rng.integers(len(pick)))] if pick else None
    solo = [x for x in partial if x.shape in _unique([y.shape for y in clip.tracks])]
    if rng.random() < 0.5:
        k = solo[int(rng.integers(len(solo)))] if solo and rng.random() < 0.8 else k
        s = k.shape if k is not None and rng.random() < 0.9 else SHAPES[int(rng.integers(len(SHAPES)))]
        n = sum(any(o.shape == s for o in st) for st in clip.states)
        return ShapesQuestion(f"In how many frames is there a {s}?", str(n), "frames", "frames:shape")
    colours = list(COLOURS)
    c = k.colour_at(int(rng.integers(k.first, k.last + 1))) if k is not None and rng.random() < 0.9 else None
    c = c or colours[int(rng.integers(len(colours)))]
    n = sum(any(o.colour == c for o in st) for st in clip.states)
    return ShapesQuestion(f"In how many frames is there a {c} object?", str(n), "frames", "frames:colour")


def make_question(clip: Clip, qtype: str, rng: np.random.Generator) -> ShapesQuestion | None:
    """Draw one question of ``qtype`` about ``clip``, or ``None`` when the clip cannot carry it.

    Args:
        clip: The clip.
        qtype: One of :data:`QTYPES`.
        rng: Random generator (consumed).

    Returns:
        The question or ``None``.
    """
    if qtype in ("appear", "disappear"):
        return _event_question(clip, qtype, rng)
    if qtype == "direction":
        return _direction_question(clip, rng)
    if qtype == "colour":
        return _colour_question(clip, rng)
    if qtype == "frames":
        return _frames_question(clip, rng)
    raise ValueError(f"unknown question type {qtype!r}; expected one of {', '.join(QTYPES)}")


def item(index: int, seed: int = DEFAULT_SEED, frames: int = DEFAULT_FRAMES) -> tuple[Clip, ShapesQuestion]:
    """The benchmark item at ``index``: its clip and its single question (type ``QTYPES[index % 5]``).

    Args:
        index: Item index.
        seed: Benchmark seed.
        frames: Frames per clip.

    Returns:
        ``(clip, question)``; the clip is re-drawn (``attempt`` + 1) until it can carry the question type.
    """
    qtype = QTYPES[index % len(QTYPES)]
    for attempt in range(200):
        clip = generate_clip(index, seed, frames, attempt)
        q = make_question(clip, qtype, _rng(seed, index, attempt, 2))
        if q is not None:
            return clip, q
    raise RuntimeError(f"could not generate a {qtype} question for item {index}")  # pragma: no cover


def split_items(split: str) -> tuple[int, int]:
    """Index range ``(first_index, count)`` of a split (``"train"``, ``"val"`` or ``"test"``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return SPLITS[split]


def iter_split(
    split: str, seed: int = DEFAULT_SEED, limit: int | None = None, frames: int = DEFAULT_FRAMES
) -> Iterator[tuple[Clip, ShapesQuestion]]:
    """Iterate over ``(clip, question)`` items of a split, in index order (at most ``limit``)."""
    start, count = split_items(split)
    n = count if limit is None else min(limit, count)
    for i in range(start, start + n):
        yield item(i, seed, frames)


def chance_levels(questions: Sequence[ShapesQuestion]) -> dict[str, dict[str, float]]:
    """Chance levels per question type (majority and uniform guess per answer-option group), as
    :func:`tokred.eval.shapes.chance_levels` computes them for images, over :data:`QTYPES`."""
    return shapes.chance_levels(questions, qtypes=QTYPES)
