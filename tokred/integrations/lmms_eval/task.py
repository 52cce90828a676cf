"""Export tokred's built-in ``shapes`` benchmark as local lmms-eval tasks (parquet + YAML, fully offline).

Two tasks are written into one folder, to be passed to lmms-eval with ``--include_path``:

* ``<name>`` (``generate_until``): the question plus "Answer with one word.", scored by exact match of the first
  word against the accepted answers (tokred's own scoring, so numbers match ``tokred compare``);
* ``<name>_mc`` (``multiple_choice``, needs ``--force_simple``): the same questions, each answer choice scored by
  the backend's ``loglikelihood``; the choices are the answers of the question's type in the exported split.

Command line: ``python -m tokred.integrations.lmms_eval.task OUT_DIR [--split test] [--limit 50] [--name N]``.
The YAML files name the parquet file by its absolute path (``datasets`` resolves a relative ``data_files`` against
the working directory, not the YAML's folder) and the task functions by their tokred module path.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from tokred.errors import ConfigError

__all__ = ["doc_to_text", "doc_to_visual", "export_shapes_task", "process_results"]

_FN = "tokred.integrations.lmms_eval.task"


def doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    """The image of a row, as a one-element list of RGB PIL images."""
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    """The question plus tokred's one-word instruction (the prompt text of ``tokred compare``)."""
    from tokred.eval.runner import INSTRUCTION

    return f"{doc['question']} {INSTRUCTION}"


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``exact_match``: 1.0 when the first word of the generation matches an accepted answer (normalised)."""
    from tokred.eval.datasets import exact_match
    from tokred.eval.runner import first_word

    return {"exact_match": float(exact_match(first_word(results[0]), list(doc["answers"])))}


def _rows(split: str, limit: int | None) -> list[dict[str, Any]]:
    from tokred.eval.datasets import load_dataset

    samples = list(load_dataset("shapes", split=split, limit=limit))
    if not samples:
        raise ConfigError(f"shapes split {split!r} has no samples")
    choices: dict[str, list[str]] = {}
    for s in samples:
        for a in s.answers[:1]:
            choices.setdefault(s.qtype, [])
            if a not in choices[s.qtype]:
                choices[s.qtype].append(a)
    rows = []
    for s in samples:
        buf = io.BytesIO()
        s.image.convert("RGB").save(buf, format="PNG")
        options = sorted(choices[s.qtype])
        rows.append(
            {
                "id": s.id,
                "qtype": s.qtype,
                "question": s.question,
                "answers": list(s.answers),
                "answer": s.answers[0],
                "choices": options,
                "label": options.index(s.answers[0]),
                "image": {"bytes": buf.getvalue(), "path": None},
            }
        )
    return rows


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "qtype": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answers": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "label": datasets.Value("int64"),
            "image": datasets.Image(),
        }
    )
    columns = {k: [r[k] for r in rows] for k in features}
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))


def _yaml(name: str, parquet: Path, split: str, multiple_choice: bool) -> str:
    head = (
        f"task: {name}\n"
        "dataset_path: parquet\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    {split}: {parquet.resolve()}\n"
        f"test_split: {split}\n"
        f"doc_to_visual: !function {_FN}.doc_to_visual\n"
        f"doc_to_text: !function {_FN}.doc_to_text\n"
    )
    if multiple_choice:
        return head + (
            "output_type: multiple_choice\n"
            "doc_to_choice: choices\n"
            "doc_to_target: label\n"
            "target_delimiter: ''\n"
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        )
    return head + (
        "output_type: generate_until\n"
        "doc_to_target: answer\n"
        "generation_kwargs:\n  max_new_tokens: 4\n  temperature: 0\n  do_sample: false\n"
        f"process_results: !function {_FN}.process_results\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )


def export_shapes_task(
    folder: str | Path, *, split: str = "test", limit: int | None = 50, name: str = "tokred_shapes"
) -> list[Path]:
    """Write ``<name>.yaml``, ``<name>_mc.yaml`` and ``<name>_<split>.parquet`` into ``folder``.

    Args:
        folder: Output folder (created); give it to lmms-eval as ``--include_path``.
        split: Split of the shapes benchmark.
        limit: First N questions (``None``: the whole split).
        name: Task name (the multiple-choice task is ``<name>_mc``).

    Returns:
        The two YAML paths.

    Raises:
        ConfigError: For an invalid name or an empty split.
    """
    if not name.replace("_", "").isalnum():
        raise ConfigError(f"task name {name!r}: use letters, digits and underscores")
    out = Path(folder).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    parquet = out / f"{name}_{split}.parquet"
    _write_parquet(_rows(split, limit), parquet)
    paths = []
    for task, mc in ((name, False), (f"{name}_mc", True)):
        path = out / f"{task}.yaml"
        path.write_text(_yaml(task, parquet, split, mc), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    """``python -m tokred.integrations.lmms_eval.task OUT_DIR [--split S] [--limit N] [--name NAME]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tokred.integrations.lmms_eval.task", description=__doc__)
    parser.add_argument("folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--name", default="tokred_shapes")
    args = parser.parse_args(argv)
    for path in export_shapes_task(args.folder, split=args.split, limit=args.limit, name=args.name):
        print(path)


if __name__ == "__main__":
    main()
