"""``tokred report``: tokred's comparison table, paired statistics and plots from lmms-eval runs.

Each folder given holds one or more lmms-eval runs (``<date>_results.json`` with its
``<date>_samples_<task>.jsonl``, as written by ``lmms-eval --output_path DIR --log_samples``). A run's label is the
tokred strategy in its ``--model_args`` (``strategy=...``; other backends: the model name). For every task that
the runs share, the samples are matched on lmms-eval's ``doc_id``; each run is compared with the baseline (the run
whose strategy is ``none``, else the first) on the samples both have: mean task metric with a 95 % bootstrap
interval, agreement of the filtered answers, an exact McNemar test when the metric is 0/1, and the reduction
statistics the tokred backend logs per sample (``token_counts[*].tokred``: relative prefill FLOPs, visual tokens,
tokens per layer).

Example:
    >>> from tokred.report import load_runs, summarise_runs
    >>> runs = load_runs(["runs/none", "runs/fastv"])  # doctest: +SKIP
    >>> summarise_runs(runs)["tokred_shapes"][1]["mcnemar_p"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokred.errors import ConfigError

__all__ = ["LmmsRun", "load_runs", "summarise_runs"]

_LOADER = ("pretrained", "strategy", "batch_size", "device", "dtype", "attn_implementation", "convention")


@dataclass
class LmmsRun:
    """One lmms-eval run read back from its output files.

    Attributes:
        label: Name in the table (the strategy, made unique).
        strategy: The tokred strategy (``None`` for another backend).
        options: The strategy options given in ``--model_args``.
        model: ``pretrained=`` (or lmms-eval's model name).
        results_path: The ``*_results.json`` file.
        metrics: Per task, the metric names of its ``metric_list``.
        samples: Per task, ``{doc_id: logged sample}``.
    """

    label: str
    strategy: str | None
    options: dict[str, Any]
    model: str
    results_path: Path
    metrics: dict[str, list[str]] = field(default_factory=dict)
    samples: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)


def parse_model_args(text: str) -> dict[str, Any]:
    """``key=value,key=value`` as lmms-eval writes ``model_args`` into the results (values as JSON when they parse).

    Commas inside brackets, braces or quotes do not split.
    """
    parts, depth, quote, cur = [], 0, "", ""
    for ch in text or "":
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    parts.append(cur)
    out: dict[str, Any] = {}
    for part in (p.strip() for p in parts):
        if not part:
            continue
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _results_files(folder: Path) -> list[Path]:
    if not folder.exists():
        raise ConfigError(f"{folder}: no such folder; give the --output_path of an lmms-eval run")
    if folder.is_file():
        return [folder] if folder.name.endswith("_results.json") else []
    return sorted(folder.rglob("*_results.json"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a readable lmms-eval results file ({err})") from None
    if not isinstance(data, dict) or "results" not in data:
        raise ConfigError(f"{path}: not an lmms-eval results file (no 'results')")
    return data


def _read_samples(path: Path) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except ValueError:
            raise ConfigError(f"{path}:{n}: not a JSON line (a torn or foreign sample log)") from None
        if not isinstance(sample, dict) or "doc_id" not in sample:
            raise ConfigError(f"{path}:{n}: an lmms-eval sample needs a doc_id")
        out[int(sample["doc_id"])] = sample
    return out


def _read_run(path: Path) -> LmmsRun:
    data = _read_json(path)
    config = data.get("config") or {}
    args = parse_model_args(str(config.get("model_args") or ""))
    tokred = str(config.get("model", "")) == "tokred" or "tokred" in str(config.get("model_backend", ""))
    strategy = str(args.get("strategy", "none")) if tokred else None
    options = {k: v for k, v in args.items() if k not in _LOADER and k not in ("max_new_tokens", "system_prompt")}
    model = str(args.get("pretrained") or config.get("model") or "model")
    run = LmmsRun(strategy or model, strategy, options if tokred else {}, model, path)
    date = path.name[: -len("_results.json")]
    for task in data["results"]:
        samples = path.with_name(f"{date}_samples_{task}.jsonl")
        if samples.is_file():
            run.samples[task] = _read_samples(samples)
        cfg = (data.get("configs") or {}).get(task) or {}
        run.metrics[task] = [str(m["metric"]) for m in cfg.get("metric_list") or [] if isinstance(m, dict)]
    if not run.samples:
        raise ConfigError(f"{path}: no sample logs beside it; rerun lmms-eval with --log_samples")
    return run


def load_runs(folders: Sequence[str | Path]) -> list[LmmsRun]:
    """Every lmms-eval run under ``folders`` (each folder searched recursively), labels made unique.

    Raises:
        ConfigError: For a missing folder, a folder without results, a results file without sample logs, or
            fewer than two runs in all.
    """
    runs: list[LmmsRun] = []
    for folder in folders:
        files = _results_files(Path(folder).expanduser())
        if not files:
            raise ConfigError(
                f"{folder}: no lmms-eval results (*_results.json) in it; run lmms-eval with --output_path {folder} "
                "--log_samples"
            )
        runs.extend(_read_run(f) for f in files)
    if len(runs) < 2:
        raise ConfigError(f"found {len(runs)} lmms-eval run; give at least two (e.g. strategy=none and one to compare)")
    seen: dict[str, int] = {}
    for run in runs:
        base = run.label + (f"({_options_text(run.options)})" if run.options else "")
        seen[base] = seen.get(base, 0) + 1
        run.label = base if seen[base] == 1 else f"{base}#{seen[base]}"
    return runs


def _options_text(options: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(options.items()))


# ---------------------------------------------------------------------------------------------------- summary


def _score(sample: dict[str, Any], metric: str) -> float | None:
    value = sample.get(metric)
    if isinstance(value, dict):
        value = value.get("score")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


def _answer(sample: dict[str, Any]) -> str:
    resp = sample.get("filtered_resps")
    while isinstance(resp, list) and len(resp) == 1:
        resp = resp[0]
    return json.dumps(resp, sort_keys=True, default=str) if not isinstance(resp, str) else resp.strip().lower()


def _reduction(sample: dict[str, Any]) -> dict[str, float] | None:
    """Means over a sample's requests of the tokred statistics in its token counts (``None`` when absent)."""
    stats = [c["tokred"] for c in sample.get("token_counts") or [] if isinstance(c, dict) and "tokred" in c]
    if not stats:
        return None
    keys = ("relative_prefill_flops", "prefill_flops", "visual_tokens_in", "visual_tokens_into_llm")
    out = {k: math.fsum(float(s[k]) for s in stats) / len(stats) for k in keys}
    out["mean_tokens_per_layer"] = math.fsum(float(s["mean_tokens_per_layer"]) for s in stats) / len(stats)
    return out


def _pick_metric(runs: Sequence[LmmsRun], task: str, metric: str | None) -> str:
    names = runs[0].metrics.get(task) or []
    if metric is not None:
        for run in runs:
            if not any(_score(s, metric) is not None for s in run.samples[task].values()):
                available = ", ".join(names) or "none listed"
                raise ConfigError(f"task {task}: run {run.label} has no numeric per-sample '{metric}' ({available})")
        return metric
    for name in names:
        if all(any(_score(s, name) is not None for s in run.samples[task].values()) for run in runs):
            return name
    raise ConfigError(f"task {task}: no metric of {names or 'its metric_list'} has a number per sample; pass --metric")


def summarise_runs(
    runs: Sequence[LmmsRun], *, metric: str | None = None, baseline: str | None = None, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Per shared task, one summary row per run (baseline first), matched on doc ids.

    Rows have the keys of ``tokred compare``'s rows where they apply (``strategy``, ``n``, ``accuracy`` and its
    ``accuracy_ci_low/high``, ``agreement``, ``mcnemar_p``, ``relative_flops``, ``prefill_flops``, ``visual_in``,
    ``visual_into_llm``, ``mean_tokens_per_layer``) plus ``metric``, ``task`` and ``unmatched`` (samples of the run
    that the baseline lacks).

    Raises:
        ConfigError: For an unknown ``baseline`` label, no shared task, or runs with no doc id in common.
    """
    base = _baseline(runs, baseline)
    order = [base, *(r for r in runs if r is not base)]
    tasks = [t for t in base.samples if all(t in r.samples for r in runs)]
    if not tasks:
        raise ConfigError(f"the runs share no task with sample logs ({', '.join(r.label for r in runs)})")
    return {task: _task_rows(order, task, _pick_metric(order, task, metric), seed) for task in tasks}


def _baseline(runs: Sequence[LmmsRun], label: str | None) -> LmmsRun:
    if label is not None:
        for run in runs:
            if run.label == label or run.strategy == label:
                return run
        raise ConfigError(f"--baseline {label!r} is none of the runs: {', '.join(r.label for r in runs)}")
    return next((r for r in runs if r.strategy == "none"), runs[0])


def _task_rows(order: Sequence[LmmsRun], task: str, metric: str, seed: int) -> list[dict[str, Any]]:
    from tokred.stats import bootstrap_ci, mcnemar_exact

    base = order[0].samples[task]
    rows = []
    for run in order:
        samples = run.samples[task]
        ids = sorted(i for i in samples if i in base and _score(samples[i], metric) is not None)
        ids = [i for i in ids if _score(base[i], metric) is not None]
        if not ids:
            raise ConfigError(f"task {task}: runs {order[0].label} and {run.label} share no scored doc id")
        scores = [float(_score(samples[i], metric)) for i in ids]  # type: ignore[arg-type]
        base_scores = [float(_score(base[i], metric)) for i in ids]  # type: ignore[arg-type]
        mean, lo, hi = bootstrap_ci(scores, seed=seed)
        binary = all(s in (0.0, 1.0) for s in [*scores, *base_scores])
        row: dict[str, Any] = {
            "task": task,
            "metric": metric,
            "strategy": run.label,
            "model": run.model,
            "options": run.options,
            "n": len(ids),
            "unmatched": len(samples) - len(ids),
            "accuracy": mean,
            "accuracy_ci_low": lo,
            "accuracy_ci_high": hi,
            "agreement": sum(_answer(samples[i]) == _answer(base[i]) for i in ids) / len(ids),
            "mcnemar_p": mcnemar_exact([s == 1.0 for s in scores], [s == 1.0 for s in base_scores]) if binary else None,
        }
        row.update(_reduction_means([samples[i] for i in ids]))
        rows.append(row)
    if rows:
        rows[0]["mcnemar_p"] = None
    return rows


def _reduction_means(samples: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    stats = [s for s in (_reduction(x) for x in samples) if s is not None]
    keys = {
        "relative_flops": "relative_prefill_flops",
        "prefill_flops": "prefill_flops",
        "visual_in": "visual_tokens_in",
        "visual_into_llm": "visual_tokens_into_llm",
        "mean_tokens_per_layer": "mean_tokens_per_layer",
    }
    if len(stats) != len(samples):
        return {k: None for k in keys}
    return {k: math.fsum(s[v] for s in stats) / len(stats) for k, v in keys.items()}
