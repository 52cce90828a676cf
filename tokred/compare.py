"""The comparison engine behind ``tokred compare``: accuracy, FLOPs, latency and memory side by side.

Every strategy is compared with the unreduced model (``none``) on the same samples: accuracy with a bootstrap
interval, agreement with the baseline's answers, an exact McNemar test against the baseline, prefill FLOPs from
the tokens each layer really processed, measured prefill and decode latency (interleaved across strategies),
KV-cache bytes read from the cache object, and visual tokens. Per-sample results are appended to
``samples.jsonl`` as they complete, so an interrupted run loses nothing and a rerun with the same output folder
resumes.

Example:
    >>> from tokred.compare import CompareSettings, run_compare
    >>> result = run_compare(CompareSettings(strategies=["fastv"], limit=20))  # doctest: +SKIP
    >>> result.rows[1]["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from tokred._components import Strategy
from tokred.adapters import hf
from tokred.errors import ConfigError, InterruptedRun
from tokred.eval.datasets import Sample, exact_match, normalize_answer
from tokred.eval.runner import Runner
from tokred.eval.samplelog import SampleLog

BASELINE = "none"
Progress = Callable[[str, int, int], None]


class CompareSettings(BaseModel):
    """Settings of one comparison (the command-line flags, validated)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Model: None = the built-in reference model; 'tiny' for tests.")
    dataset: str = Field("shapes", description="'shapes' (built-in benchmark) or a JSONL file.")
    split: str = Field("test", description="Split of the built-in benchmark.")
    limit: int | None = Field(300, ge=1, description="Evaluate only the first N samples.")
    batch_size: int = Field(8, ge=1, le=512, description="Samples per generate() call (left-padded).")
    seed: int = Field(0, ge=0, description="Seed for the bootstrap and any seeded strategy.")
    strategies: list[str] = Field(default_factory=lambda: ["aim", "fastv"], description="Strategies to compare.")
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Per-strategy options.")
    match: tuple[Literal["flops", "tokens"], float] | None = Field(None, description="Budget to match.")
    max_new_tokens: int = Field(4, ge=1, le=64, description="Greedy tokens generated per answer.")
    timing_repeats: int = Field(5, ge=1, le=100, description="Timed rounds for latency (after one warm-up).")
    timing_new_tokens: int = Field(8, ge=2, le=128, description="Tokens generated to time the decode step.")
    convention: Literal["llm-viewer", "fastv"] = Field("llm-viewer", description="FLOPs convention.")
    output: Path | None = Field(None, description="Folder for samples.jsonl, summary files and plots.")
    match_tolerance: float = Field(0.02, gt=0, le=1, description="Relative tolerance of --match.")
    plot: bool = Field(False, description="Also draw the kept-patch picture (into output).")
    picture_samples: int = Field(4, ge=1, le=16, description="Samples shown in the kept-patch picture.")


@dataclass
class Variant:
    """One row of the comparison: a label, its strategy, and how its budget was matched."""

    label: str
    strategy: Strategy
    knob_value: float | None = None
    predicted_budget: float | None = None


@dataclass
class CompareResult:
    """What ``run_compare`` returns: one summary row per variant (baseline first) and the per-sample records."""

    rows: list[dict[str, Any]]
    records: list[dict[str, Any]]
    settings: CompareSettings
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------- setup


BUILTIN_MODELS = {"reference": "reference (DINOv2-S + SmolLM2-135M)", "tiny": "tiny-llava"}


def model_label(model: str | None) -> str:
    """The name a run's model goes by in the sample log and the table, known without loading it."""
    return BUILTIN_MODELS.get(model or "reference", model or "reference")


def check_model(model: str | None) -> None:
    """Refuse a ``--model`` that cannot load, before anything heavy happens.

    Accepted: ``None``/``"reference"``, ``"tiny"``, a local folder with an image-text-to-text ``config.json``, or a
    hub id (``org/name``) already in the local Hugging Face cache (or any hub id when the hub is reachable).

    Raises:
        ConfigError: For a missing path, an empty folder, a text-only model, a hub id that is not cached while
            offline, or a near-miss of a built-in name (``Tiny``).
    """
    if model is None or model in BUILTIN_MODELS:
        return
    if not model.strip():
        raise ConfigError("--model is empty: use 'reference' (built-in), 'tiny' (tests), a local folder or org/name")
    path = Path(model).expanduser()
    if path.exists():
        _check_model_folder(path)
        return
    if model.lower() in BUILTIN_MODELS:
        raise ConfigError(f"unknown model {model!r}; did you mean {model.lower()!r}? (names are case-sensitive)")
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~")) and " " not in model
    if not looks_like_hub_id:
        raise ConfigError(
            f"--model {model!r}: no such folder, and not a hub id (org/name) nor a built-in name "
            f"({', '.join(BUILTIN_MODELS)})"
        )
    _check_hub_id(model)


def _check_model_folder(path: Path) -> None:
    if not path.is_dir():
        raise ConfigError(f"--model {path} is a file; give the model's folder (with config.json and the weights)")
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(f"--model {path} has no config.json; give a transformers model folder (save_pretrained)")
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"--model {path}: config.json is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--model {path}: config.json does not hold a JSON object")
    if not _is_image_text_to_text(str(raw.get("model_type", ""))) and "vision_config" not in raw:
        arch = ", ".join(raw.get("architectures") or []) or raw.get("model_type") or "unknown"
        raise ConfigError(
            f"--model {path} is not an image-text-to-text model ({arch}); tokred reduces visual tokens, so it needs "
            "a multimodal model such as LLaVA, Qwen2-VL or SmolVLM"
        )


def _is_image_text_to_text(model_type: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def _check_hub_id(model: str) -> None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json")
    if isinstance(cached, str):
        return
    if _env_offline():
        raise ConfigError(
            f"--model {model!r} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE); "
            "download it first or pass a local folder"
        )
    from huggingface_hub import model_info
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        model_info(model, timeout=3)
    except RepositoryNotFoundError:
        raise ConfigError(f"--model {model!r}: no such model on the Hugging Face hub (or it is private)") from None
    except Exception as err:  # noqa: BLE001 - any network failure means the same to the user
        raise ConfigError(
            f"--model {model!r} is not in the local Hugging Face cache and the hub cannot be reached "
            f"({type(err).__name__}); download it first or pass a local folder"
        ) from None


def _env_offline() -> bool:
    import os

    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def load_runner(model: str | None) -> Runner:
    """The runner for ``--model``: the reference model (None), the tiny test model ('tiny'), or a local path/hub id.

    Raises:
        ConfigError: If the model cannot be loaded (see [`check_model`][tokred.compare.check_model]).
    """
    from tokred.eval.runner import HFRunner, TinyRunner

    check_model(model)
    if model == "tiny":
        return TinyRunner()
    if model is None or model == "reference":
        from tokred.eval.reference import load_reference_model

        ref_model, processor = load_reference_model()
        return HFRunner(ref_model, processor, name=model_label(model))
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        hf_model = AutoModelForImageTextToText.from_pretrained(model, attn_implementation="sdpa").eval()
        processor = AutoProcessor.from_pretrained(model)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--model {model!r} cannot be loaded: {first}") from None
    runner = HFRunner(hf_model, processor, name=model)
    _ = runner.image_token_id  # a model without image placeholders is refused here, not mid-run
    return runner


def build_variants(settings: CompareSettings) -> list[Variant]:
    """The baseline plus every requested strategy with its options (unknown names and options fail here)."""
    import tokred

    names = [n for n in settings.strategies if n != BASELINE]
    unknown_opts = set(settings.options) - set(names)
    if unknown_opts:
        raise ConfigError(f"options given for {sorted(unknown_opts)}, which are not among the strategies {names}")
    variants = [Variant(BASELINE, tokred.create_strategy(BASELINE))]
    for name in names:
        strategy = tokred.create_strategy(name, **settings.options.get(name, {}))
        _probe_schedule(strategy)
        variants.append(Variant(name, strategy))
    return variants


_PROBE_DEPTH, _PROBE_TOKENS = 1024, 576


def _probe_schedule(strategy: Strategy) -> None:
    """Ask the schedule for a deep stack before any model is loaded, so that an inconsistent configuration (such as
    ``l1 >= l2``) fails now; whether it fits the model's depth is checked when the model is patched."""
    if strategy.scheduler is None:
        return
    try:
        strategy.scheduler.budgets(_PROBE_DEPTH, _PROBE_TOKENS)
    except ConfigError as err:
        raise ConfigError(f"strategy '{strategy.name}': {err}") from None


def text_config_of(model: Any) -> Any:
    """The language model's config of a multimodal model."""
    cfg = model.config
    return getattr(cfg, "text_config", None) or cfg


def prompt_counts(runner: Runner, inputs: dict[str, torch.Tensor]) -> tuple[list[int], list[int]]:
    """Per-sample (text tokens, visual tokens) of a left-padded batch, before any reduction."""
    ids, mask = inputs["input_ids"], inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
    visual = (ids == runner.image_token_id) & mask.bool()  # (B, N)
    v = visual.sum(-1).tolist()
    t = (mask.bool() & ~visual).sum(-1).tolist()
    return [int(x) for x in t], [int(x) for x in v]


# ----------------------------------------------------------------------------------------------- budget match


def match_budgets(variants: list[Variant], settings: CompareSettings, counts: tuple[int, int], runner: Runner) -> None:
    """Set each strategy's budget knob so that its predicted budget hits ``settings.match`` (in place).

    Raises:
        ConfigError: If a strategy cannot reach the budget within the tolerance (the message says what it can reach).
    """
    from tokred.budget import search_knob

    assert settings.match is not None
    kind, target = settings.match
    measure = _budget_measure(kind, runner, counts, settings.convention)
    failures = []
    for variant in variants[1:]:
        found = search_knob(variant.strategy, measure, target)
        variant.strategy, variant.knob_value, variant.predicted_budget = found.strategy, found.value, found.achieved
        if found.relative_error > settings.match_tolerance:
            failures.append(
                f"'{variant.label}' reaches {kind}={found.achieved:.4g} at best ({variant.strategy.budget_knob}="
                f"{found.value:.4g}), not {target:g} within {settings.match_tolerance:.0%}"
            )
    if failures:
        raise ConfigError("budget not reachable: " + "; ".join(failures) + ". Choose another target or strategy.")


def _budget_measure(kind: str, runner: Runner, counts: tuple[int, int], convention: str) -> Callable[[Strategy], float]:
    from tokred.budget import predict_tokens_per_layer, relative_flops_measure

    text_cfg = text_config_of(runner.model)
    text, visual = counts
    if kind == "flops":
        return relative_flops_measure(
            text_cfg, text_tokens=text, visual_tokens=visual, grid=runner.image_grid, convention=convention
        )
    layers = int(text_cfg.num_hidden_layers)

    def mean_visual_tokens(strategy: Strategy) -> float:
        tokens = predict_tokens_per_layer(
            strategy, num_layers=layers, text_tokens=text, visual_tokens=visual, grid=runner.image_grid
        )
        return sum(tokens) / layers - text

    return mean_visual_tokens


# ------------------------------------------------------------------------------------------------ evaluation


def batches(items: Sequence[Sample], size: int) -> Iterator[list[Sample]]:
    """Consecutive chunks of ``items``."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def patched(model: Any, strategy: Strategy) -> Any:
    """``tokred.patch`` as a context manager (no patch at all for the baseline, which must be bitwise unchanged)."""
    import tokred

    if strategy.name == BASELINE:
        return nullcontext(None)
    return tokred.patch(model, strategy)


def _tokens_per_sample(handle: Any, text: list[int], visual: list[int], layers: int) -> list[list[int]]:
    """Tokens each layer processed, per sample.

    The handle reports the padded batch's length per layer. Left padding is never reduced, so sample ``i`` processed
    that length minus its own padding, ``W - (text_i + visual_i)`` with ``W`` the padded prompt width.
    """
    if handle is None:
        return [[t + v] * layers for t, v in zip(text, visual)]
    width = max(t + v for t, v in zip(text, visual))
    per_layer = list(handle.stats.tokens_per_layer)
    return [[n - (width - (t + v)) for n in per_layer] for t, v in zip(text, visual)]


def evaluate_variant(
    runner: Runner,
    variant: Variant,
    samples: Sequence[Sample],
    settings: CompareSettings,
    sink: Callable[[list[dict[str, Any]]], None],
    progress: Progress | None = None,
) -> None:
    """Generate answers for ``samples`` under the variant's strategy, calling ``sink`` with the records of each
    batch (one per sample), so that a batch is written whole or not at all."""
    from tokred.flops import prefill_flops

    text_cfg = text_config_of(runner.model)
    layers = int(text_cfg.num_hidden_layers)
    done = 0
    with patched(runner.model, variant.strategy) as handle:
        for chunk in batches(samples, settings.batch_size):
            inputs = runner.encode(chunk)
            text, visual = prompt_counts(runner, inputs)
            with torch.inference_mode():
                out = runner.model.generate(**inputs, max_new_tokens=settings.max_new_tokens, do_sample=False)
            answers = runner.decode(out[:, inputs["input_ids"].shape[1] :])
            per_sample = _tokens_per_sample(handle, text, visual, layers)
            records = []
            for s, answer, t, v, tokens in zip(chunk, answers, text, visual, per_sample):
                base = prefill_flops(text_cfg, [t + v] * layers, settings.convention)
                flops = prefill_flops(text_cfg, tokens, settings.convention)
                records.append(_record(variant, s, answer, t, v, tokens, flops, base))
            sink(records)
            done += len(chunk)
            if progress is not None:
                progress(variant.label, done, len(samples))


def _record(
    variant: Variant, s: Sample, answer: str, text: int, visual: int, tokens: list[int], flops: float, base: float
) -> dict[str, Any]:
    return {
        "strategy": variant.label,
        "options": variant.strategy.config.model_dump(mode="json"),
        "id": s.id,
        "qtype": s.qtype,
        "question": s.question,
        "answers": s.answers,
        "prediction": answer,
        "correct": exact_match(answer, s.answers),
        "text_tokens": text,
        "visual_in": visual,
        "visual_into_llm": tokens[0] - text,
        "tokens_per_layer": tokens,
        "prefill_flops": flops,
        "relative_flops": flops / base if base else 1.0,
    }


# ---------------------------------------------------------------------------------------------------- timing


def measure_costs(runner: Runner, variants: list[Variant], sample: Sample, settings: CompareSettings) -> dict[str, Any]:
    """Prefill (time to first token) and per-token decode latency, interleaved across variants, plus KV-cache bytes
    and peak memory, on one sample (batch size 1)."""
    from tokred.bench import kv_cache_bytes, peak_memory

    inputs = runner.encode([sample])
    n_new = settings.timing_new_tokens
    prefill: dict[str, list[float]] = {v.label: [] for v in variants}
    total: dict[str, list[float]] = {v.label: [] for v in variants}
    memory: dict[str, Any] = {}
    for r in range(settings.timing_repeats + 1):  # round 0 is the warm-up
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            with patched(runner.model, v.strategy):
                t1 = _timed_generate(runner, inputs, 1)
                tn = _timed_generate(runner, inputs, n_new)
                if r == 0:
                    with peak_memory(runner.model.device) as mem, torch.inference_mode():
                        out = runner.model(**inputs, use_cache=True)
                    memory[v.label] = {"kv_cache_bytes": kv_cache_bytes(hf.output_cache(out)), "peak": mem}
            if r > 0:
                prefill[v.label].append(t1)
                total[v.label].append(tn)
    return {v.label: _cost_row(prefill[v.label], total[v.label], n_new, memory[v.label]) for v in variants}


def _timed_generate(runner: Runner, inputs: dict[str, torch.Tensor], n_new: int) -> float:
    import time

    sync = torch.cuda.synchronize if runner.model.device.type == "cuda" else None
    start = time.perf_counter()
    with torch.inference_mode():
        runner.model.generate(**inputs, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
    if sync is not None:
        sync()
    return time.perf_counter() - start


def _cost_row(prefill: list[float], total: list[float], n_new: int, memory: dict[str, Any]) -> dict[str, Any]:
    from tokred.bench import TimingStats

    pre = TimingStats.from_samples(prefill)
    decode = TimingStats.from_samples([(t - p) / (n_new - 1) for t, p in zip(total, prefill)])
    peak = memory["peak"]
    return {
        "prefill_latency_s": pre.median,
        "prefill_latency_iqr_s": pre.iqr,
        "decode_latency_s": decode.median,
        "decode_latency_iqr_s": decode.iqr,
        "kv_cache_bytes": memory["kv_cache_bytes"],
        "peak_memory_bytes": peak.delta_bytes,  # growth over the resident size before the prefill
        "peak_memory_method": peak.method,
    }


# --------------------------------------------------------------------------------------------------- summary


def summarise(variants: list[Variant], records: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """One row per variant: accuracy (+ 95 % bootstrap CI), agreement and McNemar p against the baseline, FLOPs and
    token statistics."""
    from tokred.stats import bootstrap_ci, mcnemar_exact

    by_label: dict[str, dict[str, dict[str, Any]]] = {}
    for rec in records:
        by_label.setdefault(rec["strategy"], {})[rec["id"]] = rec
    base = by_label.get(BASELINE, {})
    rows = []
    for v in variants:
        recs = by_label.get(v.label, {})
        ids = [i for i in recs if i in base] if v.label != BASELINE else list(recs)
        if not ids:
            continue
        correct = [bool(recs[i]["correct"]) for i in ids]
        acc, lo, hi = bootstrap_ci(correct, seed=seed)
        base_correct = [bool(base[i]["correct"]) for i in ids]
        agree = [normalize_answer(recs[i]["prediction"]) == normalize_answer(base[i]["prediction"]) for i in ids]
        rows.append(
            {
                "strategy": v.label,
                "options": v.strategy.config.model_dump(mode="json"),
                "budget_knob": v.strategy.budget_knob,
                "knob_value": v.knob_value,
                "n": len(ids),
                "accuracy": acc,
                "accuracy_ci_low": lo,
                "accuracy_ci_high": hi,
                "accuracy_by_type": _by_type(recs, ids),
                "agreement": sum(agree) / len(agree),
                "mcnemar_p": mcnemar_exact(correct, base_correct) if v.label != BASELINE else 1.0,
                **_token_stats(recs, ids),
            }
        )
    return rows


def _by_type(recs: dict[str, dict[str, Any]], ids: list[str]) -> dict[str, float]:
    groups: dict[str, list[bool]] = {}
    for i in ids:
        groups.setdefault(recs[i]["qtype"], []).append(bool(recs[i]["correct"]))
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def _token_stats(recs: dict[str, dict[str, Any]], ids: list[str]) -> dict[str, float]:
    def mean(key: str) -> float:
        return math.fsum(float(recs[i][key]) for i in ids) / len(ids)

    layer_means = [sum(recs[i]["tokens_per_layer"]) / len(recs[i]["tokens_per_layer"]) for i in ids]
    return {
        "relative_flops": mean("relative_flops"),
        "prefill_flops": mean("prefill_flops"),
        "visual_in": mean("visual_in"),
        "visual_into_llm": mean("visual_into_llm"),
        "mean_tokens_per_layer": math.fsum(layer_means) / len(layer_means),
    }


# ----------------------------------------------------------------------------------------------- persistence


def fingerprint(settings: CompareSettings, model_name: str, dataset_sha256: str | None = None) -> dict[str, Any]:
    """The settings that decide every per-sample answer (a resumed run must match them)."""
    return {
        "model": model_name,
        "dataset": settings.dataset,
        "dataset_sha256": dataset_sha256,
        "split": settings.split,
        "max_new_tokens": settings.max_new_tokens,
        "convention": settings.convention,
    }


def check_settings(settings: CompareSettings) -> None:
    """Checks of the settings that need neither the model nor the dataset.

    Raises:
        ConfigError: For an option that sets the knob ``--match`` searches, or a non-finite ``--match`` target.
    """
    from tokred._api import get_strategy_class

    if settings.match is None:
        return
    kind, target = settings.match
    if not math.isfinite(target):
        raise ConfigError(f"--match {kind}={target}: the target must be a finite number")
    for name, opts in settings.options.items():
        if name == BASELINE:
            continue
        knob = get_strategy_class(name).budget_knob
        if knob is not None and knob in opts:
            raise ConfigError(
                f"-o {name}.{knob}={opts[knob]} conflicts with --match {kind}={target:g}: --match sets {knob} itself; "
                "drop one of them"
            )


def _no_samples_message(settings: CompareSettings, dataset: Any) -> str:
    errors = [str(e) for e in _errors(dataset)]
    if not errors:
        return f"dataset '{settings.dataset}' has no samples"
    shown = "; ".join(errors[:5]) + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else "")
    return f"dataset '{settings.dataset}' has no usable samples: {shown}"


def run_compare(settings: CompareSettings, progress: Progress | None = None) -> CompareResult:
    """Run the whole comparison (see the module docstring).

    Everything that can be checked without the model is checked first (strategies and options, the dataset, the
    output folder and its sample log), so that a typo never costs a model load.

    Raises:
        ConfigError: For bad settings, a sample log written with other settings or another dataset.
        DatasetError: For a dataset that cannot be read or has no usable sample.
        OutputError: For an unusable output folder, a full disk, or an output folder another run is writing.
        InterruptedRun: On Ctrl-C (the message says how many records were kept).
    """
    from tokred.eval.datasets import dataset_hash, load_dataset

    check_settings(settings)
    variants = build_variants(settings)
    check_model(settings.model)
    dataset = load_dataset(settings.dataset, split=settings.split, limit=settings.limit)
    if len(dataset) == 0:
        from tokred.eval.datasets import DatasetError

        raise DatasetError(_no_samples_message(settings, dataset))
    header = fingerprint(settings, model_label(settings.model), dataset_hash(dataset))
    with SampleLog(settings.output, header) as log:
        try:
            return _run(settings, variants, dataset, log, progress)
        except KeyboardInterrupt:
            if log.path is None:
                message = "interrupted; no --output was given, so nothing was kept (pass --output to resume later)"
            else:
                message = (
                    f"interrupted; {len(log.records)} records kept in {log.path}, rerun the same command to resume"
                )
            raise InterruptedRun(message) from None


def _run(
    settings: CompareSettings, variants: list[Variant], dataset: Any, log: SampleLog, progress: Progress | None
) -> CompareResult:
    runner = load_runner(settings.model)
    samples = list(dataset)
    text, visual = prompt_counts(runner, runner.encode(samples[:1]))
    if settings.match is not None:
        match_budgets(variants, settings, (text[0], visual[0]), runner)
    wanted = {s.id for s in samples}
    for variant in variants:
        options = variant.strategy.config.model_dump(mode="json")
        done = log.done(variant.label, options)
        todo = [s for s in samples if s.id not in done]
        evaluate_variant(runner, variant, todo, settings, log.append_batch, progress)
    records = [
        r
        for v in variants
        for r in log.matching(v.label, v.strategy.config.model_dump(mode="json"))
        if r["id"] in wanted
    ]
    rows = summarise(variants, records, settings.seed)
    costs = measure_costs(runner, variants, samples[0], settings)
    for row in rows:
        row.update(costs[row["strategy"]])
    info = {
        "model": runner.name,
        "samples": len(samples),
        "dataset_errors": [str(e) for e in _errors(dataset)],
        "log_healed_bytes": log.healed,
    }
    if settings.plot and settings.output is not None:
        picture = kept_patch_picture(
            runner, variants, samples[: settings.picture_samples], settings.output / "kept.png"
        )
        info["kept_patch_picture"] = str(picture) if picture else None
    return CompareResult(rows=rows, records=records, settings=settings, info=info)


def kept_patch_picture(runner: Runner, variants: list[Variant], samples: Sequence[Sample], path: Path) -> Path | None:
    """Draw which patches each strategy kept for a few samples (needs a model whose images form a token grid)."""
    from tokred.plots import kept_patch_figure, survival_depth

    grid = runner.image_grid
    if grid is None or not samples:
        return None
    inputs = runner.encode(samples)
    layers = int(text_config_of(runner.model).num_hidden_layers)
    depths: dict[str, list[list[float] | None]] = {}
    for v in variants:
        with patched(runner.model, v.strategy) as handle, torch.inference_mode():
            runner.model.generate(**inputs, max_new_tokens=1, do_sample=False)
            stats = None if handle is None else handle.stats
            depths[v.label] = [
                survival_depth(stats, inputs["input_ids"], runner.image_token_id, b, layers)
                for b in range(len(samples))
            ]
    return kept_patch_figure([s.image for s in samples], depths, grid, path)


def _errors(dataset: Any) -> list[Any]:
    return list(getattr(dataset, "errors", []) or [])
