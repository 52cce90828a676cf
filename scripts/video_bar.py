"""The reference model's video release bar (issue 20), read from a `tokred compare` run on `shapes-video`.

The run must hold the unreduced model (`none`) and `random@keep_ratio=0.25` (75 % of the video tokens dropped at
random before the LLM) on the test split, e.g.::

    tokred compare --model reference-video --dataset shapes-video --split test --limit 300 \
        -s random@keep_ratio=0.25 --timing-repeats 1 --format json --output runs/video-test > runs/video-test.json
    python scripts/video_bar.py runs/video-test.json --image-accuracy 91.0 --markdown EVALUATION-video.md

Chance is the majority answer of each answer-option group on the questions evaluated (`shapes_video.chance_levels`).
The bar: overall >= 75 %, every type above chance + 25, image accuracy >= today's 91.9 - 2, and the random drop
costing >= 10 points. Prints the table; exits 0 when every check is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IMAGE_TODAY = 91.9  # the released image weights on shapes:test (tokred/eval/weights/EVALUATION.md)


def _rows(run: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    rows = {r["name"]: r for r in run["rows"]}
    if "none" not in rows or "random" not in rows:
        sys.exit("the run needs the rows 'none' and 'random' (-s random@keep_ratio=0.25)")
    return rows["none"], rows["random"]


def _chance(split: str, limit: int) -> dict[str, dict[str, float]]:
    from tokred.eval import shapes_video

    questions = [q for _, q in shapes_video.iter_split(split, limit=limit)]
    return shapes_video.chance_levels(questions)


def checks(run: dict[str, Any], image_accuracy: float | None) -> list[tuple[str, str, str, bool]]:
    """(check, required, measured, met) for every criterion of the bar."""
    none, rnd = _rows(run)
    settings = run["settings"]
    chance = _chance(settings["split"], int(none["n"]))
    out = [("overall", ">= 75.0 %", f"{100 * none['accuracy']:.1f} %", none["accuracy"] >= 0.75)]
    for qtype, acc in sorted(none["accuracy_by_type"].items()):
        need = 100 * chance[qtype]["majority"] + 25
        out.append((qtype, f"> {need:.1f} % (chance {need - 25:.1f} + 25)", f"{100 * acc:.1f} %", 100 * acc > need))
    cost = 100 * (none["accuracy"] - rnd["accuracy"])
    out.append(("75 % random drop costs >= 10 points", ">= 10", f"{cost:.1f} points", cost >= 10))
    if image_accuracy is not None:
        need = IMAGE_TODAY - 2
        got = f"{image_accuracy:.1f} %"
        out.append(("image accuracy (shapes:test)", f">= {need:.1f} %", got, image_accuracy >= need))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the compare run's --format json output")
    p.add_argument("--image-accuracy", type=float, default=None, help="the same weights on shapes:test, in %")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    rows = checks(json.loads(args.run.read_text()), args.image_accuracy)
    lines = ["| check | required | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {c} | {need} | {got} | {'met' if ok else '**not met**'} |" for c, need, got, ok in rows]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0 if all(ok for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
