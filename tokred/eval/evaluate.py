"""Batched greedy-decoding evaluation (left padding) and a random visual-token-drop curve.

The random drop here is self-contained (it does not use the tokred pipeline): it wraps the model's
``get_image_features`` so that each image keeps a random, order-preserving subset of its projected visual
tokens, and removes the same number of image placeholders from ``input_ids`` before generation. The kept
tokens are therefore re-indexed (positions become contiguous), as a plain shorter image would be.

Command line::

    python -m tokred.eval.evaluate --split test --drops 0,0.5,0.75,0.9 --json runs/reference/eval.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokred.eval.datasets import Dataset, Sample, ShapesDataset, exact_match, load_dataset
from tokred.ops.counts import exact_ratio, keep_count

__all__ = ["EvalResult", "Prediction", "drop_curve", "evaluate", "format_table", "main", "random_token_drop"]


@dataclass
class Prediction:
    """One generated answer.

    Attributes:
        id: Sample id.
        qtype: Question type.
        question: Question.
        prediction: Decoded answer (special tokens removed, stripped).
        answers: Gold answers.
        correct: Exact match after normalisation.
    """

    id: str
    qtype: str
    question: str
    prediction: str
    answers: list[str]
    correct: bool


@dataclass
class EvalResult:
    """Accuracy of one evaluation run.

    Attributes:
        accuracy: Exact-match accuracy per question type and ``"overall"`` (0-1).
        counts: Number of questions per type and ``"overall"``.
        drop_ratio: Fraction of visual tokens dropped before the LLM.
        seconds: Wall time.
        predictions: Every prediction.
    """

    accuracy: dict[str, float]
    counts: dict[str, int]
    drop_ratio: float = 0.0
    seconds: float = 0.0
    predictions: list[Prediction] = field(default_factory=list)


class _DropState:
    def __init__(self) -> None:
        self.keep: list[torch.Tensor] | None = None


@contextlib.contextmanager
def random_token_drop(model: Any, ratio: float) -> Iterator[_DropState]:
    """Patch ``model.model.get_image_features`` to keep, per image, the indices set on the yielded state.

    Args:
        model: A LLaVA-style model whose ``model.get_image_features`` returns per-image features in
            ``pooler_output``.
        ratio: Fraction of visual tokens dropped (only used to skip patching when 0).

    Yields:
        A state object; set ``state.keep`` to one sorted LongTensor of kept indices per image before each call.
    """
    state = _DropState()
    inner = model.model
    if ratio <= 0:
        yield state
        return
    original = inner.get_image_features

    @functools.wraps(original)  # generate() inspects the signature to route pixel_values
    def patched(*args: Any, **kwargs: Any) -> Any:
        from tokred.adapters import hf

        out = original(*args, **kwargs)
        feats = hf.pooled(out)
        if state.keep is None or len(state.keep) != len(feats):
            raise RuntimeError("random_token_drop: keep indices not set for this batch")
        hf.set_pooled(out, [f[k.to(f.device)] for f, k in zip(feats, state.keep)])
        return out

    inner.get_image_features = patched
    try:
        yield state
    finally:
        del inner.get_image_features  # restore the class method


def _prompt(processor: Any, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text: str = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text


def _shorten(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int, keep: Sequence[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove image placeholders so that row ``i`` keeps ``keep[i]`` of them; re-pad on the left."""
    rows = []
    for r in range(input_ids.shape[0]):
        ids = input_ids[r][attention_mask[r].bool()]
        img = (ids == image_token_id).nonzero().flatten()
        drop = img[keep[r] :]
        sel = torch.ones_like(ids, dtype=torch.bool)
        sel[drop] = False
        rows.append(ids[sel])
    n = max(len(x) for x in rows)
    out = torch.full((len(rows), n), pad_id, dtype=input_ids.dtype)
    mask = torch.zeros((len(rows), n), dtype=attention_mask.dtype)
    for r, x in enumerate(rows):
        out[r, n - len(x) :] = x
        mask[r, n - len(x) :] = 1
    return out, mask


@torch.no_grad()
def evaluate(
    model: Any,
    processor: Any,
    dataset: Dataset | Sequence[Sample],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 6,
    drop_ratio: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> EvalResult:
    """Greedy-decode every sample (batched, left padded) and score exact match.

    Args:
        model: A LLaVA-style ``*ForConditionalGeneration`` model.
        processor: Its processor (chat template with an image part).
        dataset: The samples.
        batch_size: Samples per ``generate`` call.
        max_new_tokens: Generation budget (answers are one word).
        drop_ratio: Fraction of visual tokens dropped at random before the LLM (0 = none).
        seed: Seed of the random drop (sample ``i`` uses ``seed + i``).
        progress: Print progress to stderr.

    Returns:
        The result.
    """
    tok = processor.tokenizer
    tok.padding_side = "left"
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    image_token_id = int(model.config.image_token_id)
    eos = [i for i in {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")} if isinstance(i, int) and i >= 0]
    preds: list[Prediction] = []
    t0 = time.perf_counter()
    n = len(dataset)
    with random_token_drop(model, drop_ratio) as state:
        for s in range(0, n, batch_size):
            batch = [dataset[i] for i in range(s, min(n, s + batch_size))]
            enc = processor(
                images=[b.image for b in batch],
                text=[_prompt(processor, b.question) for b in batch],
                return_tensors="pt",
                padding=True,
            )
            input_ids, attention_mask = enc["input_ids"], enc["attention_mask"]
            if drop_ratio > 0:
                n_img = int((input_ids[0][attention_mask[0].bool()] == image_token_id).sum())
                k = max(1, keep_count(n_img, 1 - exact_ratio(drop_ratio), "round"))
                keep = []
                for i in range(len(batch)):
                    g = torch.Generator().manual_seed(seed + s + i)
                    keep.append(torch.randperm(n_img, generator=g)[:k].sort().values)
                state.keep = keep
                input_ids, attention_mask = _shorten(
                    input_ids, attention_mask, image_token_id, [k] * len(batch), pad_id
                )
            dev = model.device
            out = model.generate(
                input_ids=input_ids.to(dev),
                attention_mask=attention_mask.to(dev),
                pixel_values=enc["pixel_values"].to(dev, model.dtype),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad_id,
            )
            texts = tok.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
            for b, text in zip(batch, texts):
                p = text.strip()
                preds.append(Prediction(b.id, b.qtype, b.question, p, list(b.answers), exact_match(p, b.answers)))
            if progress:
                done = len(preds)
                acc = sum(p.correct for p in preds) / done
                print(
                    f"\r[eval drop={drop_ratio:.2f}] {done}/{n} acc {100 * acc:.1f}% "
                    f"({(time.perf_counter() - t0) / done:.2f} s/question)",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    if progress:
        print(file=sys.stderr)
    types = sorted({p.qtype for p in preds})
    accuracy = {t: sum(p.correct for p in preds if p.qtype == t) / sum(p.qtype == t for p in preds) for t in types}
    counts = {t: sum(p.qtype == t for p in preds) for t in types}
    accuracy["overall"] = sum(p.correct for p in preds) / max(1, len(preds))
    counts["overall"] = len(preds)
    return EvalResult(accuracy, counts, drop_ratio, time.perf_counter() - t0, preds)


def drop_curve(
    model: Any,
    processor: Any,
    dataset: Dataset | Sequence[Sample],
    ratios: Sequence[float] = (0.0, 0.5, 0.75, 0.9),
    **kwargs: Any,
) -> dict[float, EvalResult]:
    """Evaluate at several random-drop ratios.

    Args:
        model: The model.
        processor: Its processor.
        dataset: The samples.
        ratios: Drop ratios.
        **kwargs: Passed to :func:`evaluate`.

    Returns:
        ``{ratio: result}``.
    """
    return {r: evaluate(model, processor, dataset, drop_ratio=r, **kwargs) for r in ratios}


def format_table(results: dict[float, EvalResult], chance: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown table: one row per drop ratio (plus chance rows), one column per question type.

    Args:
        results: Output of :func:`drop_curve`.
        chance: Output of :func:`tokred.eval.shapes.chance_levels` (optional).

    Returns:
        The table.
    """
    first = next(iter(results.values()))
    types = [t for t in first.accuracy if t != "overall"]
    cols = ["overall", *types]
    lines = [
        "| visual tokens dropped | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for r, res in results.items():
        lines.append(
            f"| {100 * r:.0f} % | " + " | ".join(f"{100 * res.accuracy.get(c, float('nan')):.1f}" for c in cols) + " |"
        )
    if chance:
        for kind in ("majority", "uniform"):
            vals = [100 * chance.get(c, {}).get(kind, float("nan")) for c in cols]
            lines.append(f"| chance ({kind}) | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate the reference model (or a cached checkpoint) on a dataset; see ``--help``.

    Args:
        argv: Arguments.

    Returns:
        Exit status.
    """
    p = argparse.ArgumentParser(prog="python -m tokred.eval.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="shapes", help="'shapes' or a JSONL file")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--drops", default="0", help="comma-separated drop ratios, e.g. 0,0.5,0.75,0.9")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--untrained", action="store_true", help="evaluate the untrained reference model")
    p.add_argument(
        "--weights", type=Path, default=None, help="trained weights file (default: the released reference weights)"
    )
    p.add_argument("--json", type=Path, default=None, help="write results (with predictions) here")
    p.add_argument("--markdown", type=Path, default=None, help="write the table (with the command) here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from tokred.eval.reference import load_reference_model

    model, processor = load_reference_model(trained=not args.untrained, weights=args.weights)
    ds = load_dataset(args.dataset, split=args.split, limit=args.limit)
    ratios = [float(x) for x in args.drops.split(",")]
    results = drop_curve(model, processor, ds, ratios, batch_size=args.batch_size)
    chance = ds.chance_levels() if isinstance(ds, ShapesDataset) else None
    table = format_table(results, chance)
    print(table)
    if args.markdown:
        cmd = "python -m tokred.eval.evaluate " + " ".join(sys.argv[1:] if argv is None else list(argv))
        timing = ", ".join(f"{100 * r:.0f} %: {res.seconds:.0f} s" for r, res in results.items())
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(
            f"# Evaluation of the reference model on {ds.name}\n\n"
            f"- command: `{cmd}` (threads: {args.threads})\n"
            f"- {len(ds)} questions, greedy decoding, batch {args.batch_size}, left padding; exact match after "
            "normalisation\n"
            f"- random drop: a random, order-preserving subset of the visual tokens is kept before the LLM (seed 0)\n"
            f"- wall time per drop level: {timing}\n\n{table}\n"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "dataset": ds.name,
            "n": len(ds),
            "chance": chance,
            "results": {str(r): asdict(res) for r, res in results.items()},
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
