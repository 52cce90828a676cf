"""One dataset interface for evaluation: the built-in ``shapes`` and ``shapes-video`` benchmarks and user JSONL files.

A user JSONL file holds one object per line::

    {"image": "imgs/0001.png", "question": "What colour is the car?", "answers": ["red"]}

``image`` is relative to the JSONL file (absolute paths work too). Optional keys: ``id`` and ``qtype``. Bad
lines do not stop loading: each is recorded in :attr:`JsonlDataset.errors` with its line number and what is
wrong, and :func:`load_dataset` with ``strict=True`` raises instead.

Scoring is exact match after normalisation (:func:`normalize_answer`): lowercase, punctuation and articles
removed, number words mapped to digits, whitespace collapsed.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image

from tokred.errors import TokredError
from tokred.eval import shapes, shapes_video

__all__ = [
    "Dataset",
    "DatasetError",
    "JsonlDataset",
    "LineError",
    "Sample",
    "ShapesDataset",
    "ShapesVideoDataset",
    "exact_match",
    "load_dataset",
    "normalize_answer",
]


@dataclass
class Sample:
    """One visual question.

    Attributes:
        image: The image.
        question: The question text.
        answers: Accepted answers (any one, after normalisation, counts as correct).
        qtype: Question type (``"colour"``, ... for ``shapes``; ``"default"`` when a JSONL line has none).
        id: Stable identifier.
        frames: The frames of a video sample, in order (``image`` is then the first frame); ``None`` for an image.
    """

    image: Image.Image
    question: str
    answers: list[str]
    qtype: str
    id: str
    frames: list[Image.Image] | None = None


@runtime_checkable
class Dataset(Protocol):
    """What evaluation needs: a name, a length, indexing and iteration over :class:`Sample`."""

    name: str

    def __len__(self) -> int:
        """Number of samples."""
        ...

    def __getitem__(self, i: int) -> Sample:
        """Sample ``i``."""
        ...

    def __iter__(self) -> Iterator[Sample]:
        """Iterate over the samples in order."""
        ...


class DatasetError(TokredError, ValueError):
    """A dataset cannot be loaded (unknown name, missing file, duplicate ids, or bad lines with ``strict=True``)."""


@dataclass(frozen=True)
class LineError:
    """A JSONL line that could not be loaded.

    Attributes:
        line: 1-based line number.
        message: What is wrong.
    """

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class ShapesDataset:
    """A split of the built-in ``shapes`` benchmark (images are rendered on access).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        limit: Keep only the first ``limit`` items.
        seed: Benchmark seed.
    """

    def __init__(self, split: str = "test", limit: int | None = None, seed: int = shapes.DEFAULT_SEED) -> None:
        start, count = shapes.split_items(split, seed)
        self.name = f"shapes:{split}"
        self.split = split
        self.seed = seed
        self.start = start
        self.count = count if limit is None else max(0, min(limit, count))

    def __len__(self) -> int:
        """Number of samples."""
        return self.count

    def item(self, i: int) -> tuple[shapes.Scene, shapes.ShapesQuestion]:
        """The scene and question of sample ``i``.

        Args:
            i: Sample position in this dataset.

        Returns:
            ``(scene, question)``.
        """
        if not 0 <= i < self.count:
            raise IndexError(i)
        return shapes.item(self.start + i, self.seed)

    def __getitem__(self, i: int) -> Sample:
        """Sample ``i``."""
        scene, q = self.item(i)
        return Sample(shapes.render(scene), q.question, [q.answer], q.qtype, f"shapes-{self.start + i}")

    def __iter__(self) -> Iterator[Sample]:
        """Iterate over the samples in order."""
        for i in range(self.count):
            yield self[i]

    def questions(self) -> list[shapes.ShapesQuestion]:
        """All questions (without rendering images)."""
        return [self.item(i)[1] for i in range(self.count)]

    def chance_levels(self) -> dict[str, dict[str, float]]:
        """Chance levels per question type on this split (see :func:`tokred.eval.shapes.chance_levels`)."""
        return shapes.chance_levels(self.questions())


class ShapesVideoDataset:
    """A split of the built-in ``shapes-video`` benchmark (frames are rendered on access).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        limit: Keep only the first ``limit`` items.
        seed: Benchmark seed.
        frames: Frames per clip (8-16).
    """

    def __init__(
        self,
        split: str = "test",
        limit: int | None = None,
        seed: int = shapes_video.DEFAULT_SEED,
        frames: int = shapes_video.DEFAULT_FRAMES,
    ) -> None:
        start, count = shapes_video.split_items(split)
        if not shapes_video.MIN_FRAMES <= frames <= shapes_video.MAX_FRAMES:
            raise ValueError(f"frames={frames} is outside {shapes_video.MIN_FRAMES}..{shapes_video.MAX_FRAMES}")
        self.name = f"shapes-video:{split}"
        self.split, self.seed, self.frames, self.start = split, seed, frames, start
        self.count = count if limit is None else max(0, min(limit, count))

    def __len__(self) -> int:
        """Number of samples."""
        return self.count

    def item(self, i: int) -> tuple[shapes_video.Clip, shapes.ShapesQuestion]:
        """The clip and question of sample ``i``."""
        if not 0 <= i < self.count:
            raise IndexError(i)
        return shapes_video.item(self.start + i, self.seed, self.frames)

    def __getitem__(self, i: int) -> Sample:
        """Sample ``i`` (``frames`` holds the clip, ``image`` its first frame)."""
        clip, q = self.item(i)
        frames = shapes_video.render_clip(clip)
        return Sample(frames[0], q.question, [q.answer], q.qtype, f"shapes-video-{self.start + i}", frames)

    def __iter__(self) -> Iterator[Sample]:
        """Iterate over the samples in order."""
        for i in range(self.count):
            yield self[i]

    def questions(self) -> list[shapes.ShapesQuestion]:
        """All questions (without rendering frames)."""
        return [self.item(i)[1] for i in range(self.count)]

    def chance_levels(self) -> dict[str, dict[str, float]]:
        """Chance levels per question type on this split (see :func:`tokred.eval.shapes_video.chance_levels`)."""
        return shapes_video.chance_levels(self.questions())


@dataclass
class _JsonlRecord:
    image: Path
    question: str
    answers: list[str]
    qtype: str
    id: str


class JsonlDataset:
    """A user JSONL file of ``{"image", "question", "answers"}`` records.

    Args:
        path: The JSONL file.
        limit: Keep only the first ``limit`` good records.

    Attributes:
        errors: One :class:`LineError` per line that could not be loaded (good lines still load).
    """

    def __init__(self, path: str | Path, limit: int | None = None) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.errors: list[LineError] = []
        self.records: list[_JsonlRecord] = []
        if self.path.is_dir():
            raise DatasetError(f"dataset {self.path} is a folder; pass a .jsonl file (one JSON object per line)")
        if not self.path.is_file():
            raise DatasetError(f"dataset file not found: {self.path}")
        data = self.path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (Windows editors): harmless, dropped
            data = data[3:]
        base = self.path.parent
        seen: dict[str, int] = {}
        for lineno, raw_bytes in enumerate(data.split(b"\n"), start=1):
            if limit is not None and len(self.records) >= limit:
                break
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as e:
                self.errors.append(
                    LineError(
                        lineno,
                        f"not UTF-8 (byte 0x{raw_bytes[e.start]:02x} at column {e.start + 1}); save the file as UTF-8",
                    )
                )
                continue
            if not raw.strip():
                continue
            rec = self._parse(raw, lineno, base)
            if isinstance(rec, LineError):
                self.errors.append(rec)
                continue
            if rec.id in seen:
                raise DatasetError(
                    f"{self.path}: sample id {rec.id!r} appears on lines {seen[rec.id]} and {lineno} (ids are compared "
                    'as strings, so 1 and "1" collide); give every line its own id'
                )
            seen[rec.id] = lineno
            self.records.append(rec)

    @staticmethod
    def _parse(raw: str, lineno: int, base: Path) -> _JsonlRecord | LineError:
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            return LineError(lineno, f"invalid JSON ({e.msg} at column {e.colno})")
        if not isinstance(obj, dict):
            return LineError(lineno, f"expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in ("image", "question", "answers") if k not in obj]
        if missing:
            unknown = sorted(set(obj) - {"image", "question", "answers", "id", "qtype"})
            extra = f" (unknown key(s): {', '.join(unknown)})" if unknown else ""
            return LineError(lineno, f"missing key(s): {', '.join(missing)}{extra}; expected image, question, answers")
        image, question, answers = obj["image"], obj["question"], obj["answers"]
        if not isinstance(image, str) or not image:
            return LineError(lineno, "'image' must be a non-empty string (a path relative to the JSONL file)")
        if not isinstance(question, str) or not question.strip():
            return LineError(lineno, "'question' must be a non-empty string")
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            return LineError(lineno, "'answers' must be a non-empty list of strings")
        if not all(a.strip() for a in answers):
            return LineError(lineno, f"'answers' holds an empty answer ({answers!r}); every answer needs a word")
        rid = obj.get("id", f"line-{lineno}")
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip():
            return LineError(lineno, f"'id' must be a non-empty string or an integer, got {rid!r}")
        img_path = Path(image)
        if not img_path.is_absolute():
            img_path = base / img_path
        problem = _image_problem(img_path)
        if problem:
            return LineError(lineno, problem)
        qtype = obj.get("qtype", "default")
        return _JsonlRecord(img_path, question, list(answers), str(qtype), str(rid))

    def __len__(self) -> int:
        """Number of good records."""
        return len(self.records)

    def __getitem__(self, i: int) -> Sample:
        """Sample ``i`` (the image is opened and converted to RGB)."""
        r = self.records[i]
        with Image.open(r.image) as im:
            img = im.convert("RGB")
        return Sample(img, r.question, list(r.answers), r.qtype, r.id)

    def __iter__(self) -> Iterator[Sample]:
        """Iterate over the good records in order."""
        for i in range(len(self)):
            yield self[i]


def _image_problem(path: Path) -> str:
    """Why ``path`` is not a usable image (missing, not an image, a decompression bomb), or ``""``."""
    if not path.is_file():
        return f"image file not found: {path}"
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Image.DecompressionBombError:
        return f"image {path} is a decompression bomb (too many pixels); use a smaller image"
    except (OSError, ValueError, SyntaxError):
        return f"{path} is not an image PIL can read"
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        return f"image {path} is {width}x{height} pixels, above the decompression-bomb limit of {limit}; shrink it"
    return ""


def dataset_hash(dataset: ShapesDataset | ShapesVideoDataset | JsonlDataset) -> str:
    """A content hash of the dataset: the JSONL file's bytes, or the built-in benchmark's split and seed."""
    if isinstance(dataset, JsonlDataset):
        return dataset.sha256
    if isinstance(dataset, ShapesVideoDataset):
        return hashlib.sha256(f"shapes-video:{dataset.split}:{dataset.seed}:{dataset.frames}".encode()).hexdigest()
    return hashlib.sha256(f"shapes:{dataset.split}:{dataset.seed}".encode()).hexdigest()


def load_dataset(
    name_or_path: str | Path,
    split: str = "test",
    limit: int | None = None,
    *,
    strict: bool = False,
    frames: int | None = None,
) -> ShapesDataset | ShapesVideoDataset | JsonlDataset:
    """Load a built-in benchmark (``shapes``, ``shapes-video``) or a user JSONL file.

    Args:
        name_or_path: ``"shapes"`` or ``"shapes-video"`` (optionally with a split: ``"shapes:val"``,
            ``"shapes-video:test"``) or the path of a ``.jsonl`` file.
        split: Split of a built-in benchmark (ignored for JSONL files).
        limit: Keep only the first ``limit`` samples.
        strict: For JSONL, raise :class:`DatasetError` listing the bad lines instead of skipping them.
        frames: Frames per clip of ``shapes-video`` (default :data:`tokred.eval.shapes_video.DEFAULT_FRAMES`).

    Returns:
        The dataset.

    Raises:
        DatasetError: Unknown name, missing file, or (``strict``) bad lines.
    """
    name = str(name_or_path)
    if not name.strip():
        raise DatasetError("--dataset is empty: use 'shapes' or 'shapes-video' (built-in) or the path of a .jsonl file")
    if name == "shapes-video" or name.startswith("shapes-video:"):
        if ":" in name:
            split = name.split(":", 1)[1]
        try:
            return ShapesVideoDataset(split=split, limit=limit, frames=frames or shapes_video.DEFAULT_FRAMES)
        except ValueError as e:
            raise DatasetError(f"dataset shapes-video: {e}") from None
    if name == "shapes" or name.startswith("shapes:"):
        if ":" in name:
            split = name.split(":", 1)[1]
        try:
            return ShapesDataset(split=split, limit=limit)
        except ValueError as e:
            raise DatasetError(f"dataset shapes: {e}") from None
    path = Path(name)
    if not path.exists():
        raise DatasetError(
            f"unknown dataset {name!r}: not a built-in name (available: shapes, shapes-video) and no such file"
        )
    ds = JsonlDataset(path, limit=limit)
    if strict and ds.errors:
        detail = "; ".join(str(e) for e in ds.errors[:20])
        more = f" (and {len(ds.errors) - 20} more)" if len(ds.errors) > 20 else ""
        raise DatasetError(f"{path}: {len(ds.errors)} bad line(s): {detail}{more}")
    return ds


_NUMBERS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
    "none": "0",
}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Normalise an answer for exact match.

    Lowercases, replaces punctuation by spaces (a decimal point between digits is kept), drops the articles
    "a", "an", "the", maps number words (zero-twelve, "none") to digits and collapses whitespace.

    Args:
        text: Raw answer.

    Returns:
        The normalised answer.
    """
    t = text.lower().strip()
    t = re.sub(r"(?<=\d)\.(?=\d)", "\x00", t)
    t = _PUNCT.sub(" ", t).replace("\x00", ".")
    words = [_NUMBERS.get(w, w) for w in t.split() if w not in _ARTICLES]
    return " ".join(words)


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    """Whether ``prediction`` equals any of ``answers`` after :func:`normalize_answer`.

    Args:
        prediction: The model's answer.
        answers: Accepted answers.

    Returns:
        ``True`` on a match.
    """
    p = normalize_answer(prediction)
    return any(p == normalize_answer(a) for a in answers)
