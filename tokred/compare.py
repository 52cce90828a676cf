"""The comparison engine behind ``tokred compare``: accuracy, FLOPs, latency and memory side by side.

Every strategy is compared with the unreduced model (``none``) on the same samples: accuracy with a bootstrap
interval, agreement with the baseline's answers, an exact McNemar test against the baseline, prefill FLOPs from
the tokens each layer really processed, measured prefill and decode latency and throughput (interleaved across
strategies), KV-cache bytes read from the cache object, peak tensor memory, and visual tokens.

A strategy may be named with options (``fastv@keep_ratio=0.25``, see [`parse_spec`][tokred.compare.parse_spec]);
several ``--match`` targets evaluate every strategy at each (one point per strategy and budget, see
[`match_budgets`][tokred.compare.match_budgets]); the strategies at one budget are tested pairwise (exact McNemar,
Holm-corrected, see [`pairwise_tests`][tokred.compare.pairwise_tests]). Per-sample results are appended to
``samples.jsonl`` as they complete, so an interrupted run loses nothing and a rerun with the same output folder
resumes (records are reused per strategy label and options).

Example:
    >>> from tokred.compare import CompareSettings, run_compare
    >>> result = run_compare(CompareSettings(strategies=["fastv"], limit=20))  # doctest: +SKIP
    >>> result.rows[1]["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

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
    frames: int | None = Field(
        None, ge=8, le=32, description="Frames per clip of the built-in shapes-video benchmark (default 8)."
    )
    limit: int | None = Field(300, ge=1, description="Evaluate only the first N samples.")
    batch_size: int = Field(8, ge=1, le=512, description="Samples per generate() call (left-padded).")
    seed: int = Field(0, ge=0, description="Seed for the bootstrap and any seeded strategy.")
    strategies: list[str] = Field(
        default_factory=lambda: ["aim", "fastv"],
        description="Strategies to compare: a name, or a configured variant NAME@KEY=VALUE[@KEY=VALUE...].",
    )
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Options per strategy name (applied to every variant of that name)."
    )
    match: tuple[Literal["flops", "tokens"], list[float]] | None = Field(
        None, description="Budgets to match: a kind and one target (a single point) or several (a sweep)."
    )
    max_new_tokens: int = Field(4, ge=1, le=64, description="Greedy tokens generated per answer.")
    timing_repeats: int = Field(5, ge=1, le=100, description="Timed rounds for latency (after one warm-up).")
    timing_new_tokens: int = Field(8, ge=2, le=128, description="Tokens generated to time the decode step.")
    batch_sizes: list[int] = Field(
        default_factory=list, description="Batch sizes of the latency-vs-batch table (empty: no table)."
    )
    convention: Literal["llm-viewer", "fastv"] = Field("llm-viewer", description="FLOPs convention.")
    output: Path | None = Field(None, description="Folder for samples.jsonl, summary files and plots.")
    match_tolerance: float = Field(0.02, gt=0, le=1, description="Relative tolerance of --match.")
    plot: bool = Field(False, description="Also draw the kept-patch picture (into output).")
    picture_samples: int = Field(4, ge=1, le=16, description="Samples shown in the kept-patch picture.")

    @field_validator("match", mode="before")
    @classmethod
    def _one_or_more_targets(cls, value: Any) -> Any:
        if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], (int, float)):
            return (value[0], [value[1]])
        return value

    @field_validator("match")
    @classmethod
    def _targets_in_range(cls, value: Any) -> Any:
        if value is not None:
            check_targets(value[0], value[1])
        return value

    @field_validator("frames")
    @classmethod
    def _frames_need_video(cls, value: int | None, info: ValidationInfo) -> int | None:
        dataset = str(info.data.get("dataset", ""))
        if value is not None and not dataset.startswith("shapes-video"):
            raise ValueError(f"applies to --dataset shapes-video only, not {dataset!r}")
        return value

    @field_validator("batch_sizes")
    @classmethod
    def _batch_sizes_positive(cls, value: list[int]) -> list[int]:
        if any(b < 1 or b > 512 for b in value) or len(set(value)) != len(value):
            raise ValueError(f"batch sizes must be distinct integers in [1, 512], got {value}")
        return value


def check_targets(kind: str, targets: Sequence[float]) -> None:
    """Refuse an empty, repeated, non-finite or out-of-range list of ``--match`` targets.

    Raises:
        ValueError: Naming the first bad target (pydantic turns it into a validation error).
    """
    if not targets:
        raise ValueError(f"--match {kind}=: give at least one target")
    for t in targets:
        if not math.isfinite(t):
            raise ValueError(f"--match {kind}={t}: the target must be a finite number")
        if kind == "flops" and not 0 < t <= 1:
            raise ValueError(f"--match flops={t:g}: the relative FLOPs budget must be in (0, 1]")
        if kind == "tokens" and t <= 0:
            raise ValueError(f"--match tokens={t:g}: the token budget must be positive")
    if len(set(targets)) != len(targets):
        raise ValueError(f"--match {kind}={','.join(f'{t:g}' for t in targets)}: a target is given twice")


@dataclass
class Variant:
    """One point of the comparison: a label, its configured strategy, and the budget it was matched to.

    Attributes:
        label: The strategy as named on the command line (``fastv`` or ``fastv@keep_ratio=0.25``).
        strategy: The configured strategy (its knob set by the budget search under ``--match``).
        knob_value: The budget knob's value found by the search (``None`` without ``--match``).
        predicted_budget: The budget the model-free prediction gives at that knob value.
        target: The ``--match`` target this point was searched for (``None`` without ``--match``).
        on_target: Whether the prediction is within the tolerance of the target (an off-target point is evaluated
            at the nearest reachable budget, reported as such and left out of the paired tests).
        kind: ``"flops"`` or ``"tokens"`` (under ``--match``).
    """

    label: str
    strategy: Strategy
    knob_value: float | None = None
    predicted_budget: float | None = None
    target: float | None = None
    on_target: bool = True
    kind: str | None = None

    @property
    def id(self) -> str:
        """Unique name of the point: the label, plus the budget under ``--match`` (``fastv flops=0.25``)."""
        return self.label if self.target is None else f"{self.label} {self.kind}={self.target:g}"

    @property
    def options(self) -> dict[str, Any]:
        """The strategy's full options (JSON-ready), which with the label identify its records in the log."""
        return self.strategy.config.model_dump(mode="json")


@dataclass
class CompareResult:
    """What ``run_compare`` returns: one summary row per point (baseline first) and the per-sample records."""

    rows: list[dict[str, Any]]
    records: list[dict[str, Any]]
    settings: CompareSettings
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------- setup


BUILTIN_MODELS = {
    "reference": "reference (DINOv2-S + SmolLM2-135M)",
    "reference-video": "reference-video (DINOv2-S + SmolLM2-135M, video-trained weights)",
    "tiny": "tiny-llava",
}
_REFERENCE_WEIGHTS = {None: "reference", "reference": "reference", "reference-video": "reference-video"}


def model_label(model: str | None) -> str:
    """The name a run's model goes by in the sample log and the table, known without loading it.

    The reference model's name carries the short sha256 of its trained weights, so a result says which weights made
    it and a sample log written with other weights is not resumed.
    """
    label = BUILTIN_MODELS.get(model or "reference", model or "reference")
    if model in _REFERENCE_WEIGHTS:
        tag = reference_weights_tag(_REFERENCE_WEIGHTS[model])
        label = f"{label[:-1]}; weights {tag})" if tag else label
    return label


def reference_weights_tag(name: str = "reference") -> str | None:
    """First 12 hex digits of committed reference weights' sha256 (from their record), or None if absent."""
    record = Path(__file__).parent / "eval" / "weights" / f"{name}.json"
    try:
        sha = json.loads(record.read_text()).get("weights_sha256")
    except (OSError, ValueError):
        return None
    return str(sha)[:12] if sha else None


def check_model(model: str | None) -> None:
    """Refuse a ``--model`` that cannot load, before anything heavy happens.

    Accepted: ``None``/``"reference"``, ``"reference-video"`` (where its weights are installed), ``"tiny"``, a local
    folder with an image-text-to-text ``config.json``, or a hub id (``org/name``) already in the local Hugging Face
    cache (or any hub id when the hub is reachable).

    Raises:
        ConfigError: For a missing path, an empty folder, a text-only model, a hub id that is not cached while
            offline, or a near-miss of a built-in name (``Tiny``).
    """
    if model == "reference-video" and reference_weights_tag("reference-video") is None:
        raise ConfigError(
            "--model reference-video: its weights (tokred/eval/weights/reference-video.safetensors and .json) are not "
            "in this install; use --model reference"
        )
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
    if model is None or model in _REFERENCE_WEIGHTS:
        from tokred.eval.reference import VIDEO_FRAME_SIZE, load_reference_model, trained_weights_path

        ref_model, processor = load_reference_model(weights=trained_weights_path(_REFERENCE_WEIGHTS[model]))
        return HFRunner(ref_model, processor, name=model_label(model), frame_size=VIDEO_FRAME_SIZE)
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


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split a strategy as named on the command line into its registry name and options.

    The syntax is ``NAME`` or ``NAME@KEY=VALUE[@KEY=VALUE...]``: ``fastv@keep_ratio=0.25``,
    ``aim@l1=3@l2=6``. Values are read like ``-o`` values (numbers, ``true``/``false``, JSON lists, else strings).

    Raises:
        ConfigError: For an empty name, a part without ``=``, an empty key or a key given twice.
    """
    from tokred.cli._options import parse_value

    name, *parts = spec.split("@")
    if not name.strip():
        raise ConfigError(f"-s {spec!r}: no strategy name before '@'; write e.g. -s fastv@keep_ratio=0.25")
    options: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"-s {spec!r}: '{part}' must look like key=value, e.g. -s fastv@keep_ratio=0.25")
        if key in options:
            raise ConfigError(f"-s {spec!r}: option '{key}' is given twice")
        options[key] = parse_value(value)
    return name.strip(), options


def spec_options(spec: str, settings: CompareSettings) -> tuple[str, dict[str, Any]]:
    """Name and merged options of one ``--strategies`` entry: ``-o NAME.KEY`` options plus its ``@`` options.

    Raises:
        ConfigError: If a key is set both ways.
    """
    name, own = parse_spec(spec)
    shared = settings.options.get(name, {})
    both = sorted(set(own) & set(shared))
    if both:
        raise ConfigError(f"-s {spec!r} and -o {name}.{both[0]} both set {both[0]}; set it once")
    return name, {**shared, **own}


def build_variants(settings: CompareSettings) -> list[Variant]:
    """The baseline plus every requested strategy or variant with its options (unknown names and options, and two
    entries with the same configuration, fail here)."""
    import tokred

    specs = [s for s in settings.strategies if s != BASELINE]
    names = [parse_spec(s)[0] for s in specs]
    unknown_opts = set(settings.options) - set(names)
    if unknown_opts:
        raise ConfigError(f"options given for {sorted(unknown_opts)}, which are not among the strategies {names}")
    variants = [Variant(BASELINE, tokred.create_strategy(BASELINE))]
    seen: dict[str, str] = {}
    for spec in specs:
        name, options = spec_options(spec, settings)
        try:
            strategy = tokred.create_strategy(name, **options)
        except ConfigError as err:
            if "@" not in spec:
                raise
            raise ConfigError(f"-s {spec}: {err}") from None
        _probe_schedule(strategy)
        config = json.dumps([name, strategy.config.model_dump(mode="json")], sort_keys=True)
        if config in seen:
            raise ConfigError(
                f"-s {seen[config]} and -s {spec} are the same configuration; compare different options "
                "(e.g. fastv@keep_ratio=0.25 and fastv@keep_ratio=0.5)"
            )
        seen[config] = spec
        variants.append(Variant(spec, strategy))
    return variants


_PROBE_DEPTH, _PROBE_TOKENS = 1024, 576


def _probe_schedule(strategy: Strategy) -> None:
    """Ask the schedule for a deep stack before any model is loaded, so that an inconsistent configuration (such as
    ``l1 >= l2``) fails now; whether it fits the model's depth is checked when the model is patched."""
    if strategy.scheduler is None or getattr(type(strategy), "calibrated_budget", None):  # fitprune: from its recipe
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


def match_budgets(
    variants: list[Variant], settings: CompareSettings, counts: tuple[int, int], runner: Runner, video: bool = False
) -> list[Variant]:
    """One point per (strategy, ``--match`` target): each strategy's budget knob searched for each target.

    A target a strategy cannot reach within ``match_tolerance`` gives a point at the nearest budget it can reach,
    marked ``on_target=False`` (reported, drawn at its real cost, left out of the paired tests at that target).

    Returns:
        The baseline, then every strategy at the first target, every strategy at the second, and so on.
    """
    from tokred.budget import search_knob
    from tokred.calibration import calibrated_match

    assert settings.match is not None
    kind, targets = settings.match
    measure = _budget_measure(kind, runner, counts, settings.convention, video)
    points = [variants[0]]
    for target in targets:
        for v in variants[1:]:
            found = calibrated_match(v.strategy, kind, target, runner, measure)  # fitprune: calibrate at the target
            found = found or search_knob(v.strategy, measure, target)
            on_target = found.relative_error <= settings.match_tolerance
            points.append(Variant(v.label, found.strategy, found.value, found.achieved, target, on_target, kind))
    return points


def off_target_notes(points: Sequence[Variant], tolerance: float) -> list[str]:
    """One warning per point that could not reach its target."""
    return [
        f"'{p.label}' cannot reach {p.kind}={p.target:g} within {tolerance:.0%}: evaluated at the nearest budget it "
        f"reaches, {p.kind}={p.predicted_budget:.4g} ({p.strategy.budget_knob}={p.knob_value:.4g}), and left out of "
        "the paired tests at that budget"
        for p in points
        if not p.on_target
    ]


def _budget_measure(
    kind: str, runner: Runner, counts: tuple[int, int], convention: str, video: bool = False
) -> Callable[[Strategy], float]:
    from tokred.budget import predict_tokens_per_layer, relative_flops_measure

    text_cfg = text_config_of(runner.model)
    text, visual = counts
    shape = _visual_shape(runner, visual, video)
    if kind == "flops":
        return relative_flops_measure(text_cfg, text_tokens=text, convention=convention, **shape)
    layers = int(text_cfg.num_hidden_layers)

    def mean_visual_tokens(strategy: Strategy) -> float:
        tokens = predict_tokens_per_layer(strategy, num_layers=layers, text_tokens=text, **shape)
        return sum(tokens) / layers - text

    return mean_visual_tokens


def _visual_shape(runner: Runner, visual: int, video: bool = False) -> dict[str, Any]:
    """The budget prediction's view of a sample's ``visual`` tokens: per image, image count, grid, tower depth.

    A sample of several images (a video's frames enter the reference model as a sequence of images) has ``visual``
    tokens in ``visual / grid`` images of one grid each; the tower depth and feature layer let the prediction follow
    mergers inside the vision tower (ToMe). A video sample's frames use the runner's frame grid.
    """
    grid = runner.frame_grid if video else runner.image_grid
    per_image = grid[0] * grid[1] if grid else visual
    images = visual // per_image if per_image and visual % per_image == 0 and visual > per_image else 1
    vision_cfg = getattr(runner.model.config, "vision_config", None)
    depth = getattr(vision_cfg, "num_hidden_layers", None)
    feature_layer = getattr(runner.model.config, "vision_feature_layer", -1)
    return {
        "visual_tokens": visual // images,
        "images": images,
        "grid": grid,
        "vision_layers": int(depth) if depth is not None else None,
        "feature_layer": feature_layer if isinstance(feature_layer, int) else max(feature_layer),
        "video": video,
    }


# ------------------------------------------------------------------------------------------------ evaluation


def batches(items: Sequence[Sample], size: int) -> Iterator[list[Sample]]:
    """Consecutive chunks of ``items``."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def patched(model: Any, strategy: Strategy, clip: bool = False) -> Any:
    """``tokred.patch`` as a context manager (no patch at all for the baseline, which must be bitwise unchanged);
    ``clip``: the prompts' images are the frames of one clip (`is_clip`)."""
    import tokred

    if strategy.name == BASELINE:
        return nullcontext(None)
    return tokred.patch(model, strategy, images_as_clip=clip)


def is_clip(samples: Sequence[Sample]) -> bool:
    """Whether ``samples`` are video clips, whose frames the runners feed as a sequence of images (the generic
    path): the patch is told so (``images_as_clip``), and video variants apply (AIM ``variant="auto"``)."""
    return bool(samples) and samples[0].frames is not None


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
    with patched(runner.model, variant.strategy, is_clip(samples)) as handle:
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
                progress(variant.id, done, len(samples))


def _record(
    variant: Variant, s: Sample, answer: str, text: int, visual: int, tokens: list[int], flops: float, base: float
) -> dict[str, Any]:
    return {
        "strategy": variant.label,
        "options": variant.options,
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


def config_key(point: Variant) -> str:
    """Points with the same label and options run the same model (two targets may find the same knob value)."""
    return json.dumps([point.label, point.options], sort_keys=True)


def distinct_configs(points: Sequence[Variant]) -> list[Variant]:
    """The first point of each distinct (label, options), in order."""
    seen: dict[str, Variant] = {}
    for p in points:
        seen.setdefault(config_key(p), p)
    return list(seen.values())


def measure_costs(
    runner: Runner, points: list[Variant], samples: Sequence[Sample], settings: CompareSettings
) -> dict[str, Any]:
    """Costs of every point, measured interleaved across points so that background load hits all alike.

    - prefill (time to first token) and per-token decode latency at batch size 1, on the first sample;
    - throughput: samples per second of answer generation (``max_new_tokens`` tokens, every row generating all of
      them) for a batch of ``batch_size`` samples;
    - KV-cache bytes after the batch-1 prefill (read from the cache object) and the peak tensor memory of that
      prefill (see [`peak_prefill_memory`][tokred.compare.peak_prefill_memory]).

    Returns:
        ``{point id: {column: value}}``.
    """
    configs = distinct_configs(points)
    one = runner.encode(list(samples[:1]))
    batch = runner.encode(_cycle(samples, settings.batch_size))
    n_new, repeats = settings.timing_new_tokens, settings.timing_repeats
    jobs = {"t1": (one, 1), "tn": (one, n_new), "batch": (batch, settings.max_new_tokens)}
    timed = interleaved(runner, configs, jobs, repeats, is_clip(samples))
    costs = {}
    for c in configs:
        with patched(runner.model, c.strategy, is_clip(samples)):
            memory = peak_prefill_memory(runner, one)
        row = _cost_row(timed["t1"][config_key(c)], timed["tn"][config_key(c)], n_new, memory)
        row["throughput_samples_per_s"] = settings.batch_size / _median(timed["batch"][config_key(c)])
        row["throughput_batch_size"] = settings.batch_size
        costs[config_key(c)] = row
    return {p.id: dict(costs[config_key(p)]) for p in points}


def batch_latency_table(
    runner: Runner, points: list[Variant], samples: Sequence[Sample], settings: CompareSettings
) -> list[dict[str, Any]]:
    """Latency and throughput of answer generation at each of ``settings.batch_sizes`` for every point."""
    configs = distinct_configs(points)
    table = []
    for size in settings.batch_sizes:
        inputs = runner.encode(_cycle(samples, size))
        jobs = {"batch": (inputs, settings.max_new_tokens)}
        timed = interleaved(runner, configs, jobs, settings.timing_repeats, is_clip(samples))["batch"]
        for p in points:
            latency = _median(timed[config_key(p)])
            table.append(
                {
                    "id": p.id,
                    "strategy": p.label,
                    "batch_size": size,
                    "latency_s": latency,
                    "samples_per_s": size / latency,
                    "new_tokens": settings.max_new_tokens,
                }
            )
    return table


def interleaved(
    runner: Runner,
    configs: Sequence[Variant],
    jobs: dict[str, tuple[dict[str, torch.Tensor], int]],
    repeats: int,
    clip: bool = False,
) -> dict[str, dict[str, list[float]]]:
    """Wall times of ``generate`` per job and config; a job is (inputs, exactly this many new tokens).

    One warm-up round, then ``repeats`` rounds, each starting at the next config so that no config is always first;
    within a round a config runs every job under one patch (``clip``: the inputs' images are frames of one clip).

    Returns:
        ``{job: {config_key: [seconds per round]}}``.
    """
    times: dict[str, dict[str, list[float]]] = {job: {config_key(c): [] for c in configs} for job in jobs}
    for r in range(repeats + 1):  # round 0 is the warm-up
        order = list(configs[r % len(configs) :]) + list(configs[: r % len(configs)])
        for c in order:
            with patched(runner.model, c.strategy, clip):
                seconds = {job: _timed_generate(runner, inputs, n_new) for job, (inputs, n_new) in jobs.items()}
            if r > 0:
                for job, value in seconds.items():
                    times[job][config_key(c)].append(value)
    return times


def _cycle(samples: Sequence[Sample], size: int) -> list[Sample]:
    """``size`` samples, repeating the list when it is shorter."""
    return [samples[i % len(samples)] for i in range(size)]


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def peak_prefill_memory(runner: Runner, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """KV-cache bytes and peak tensor memory of one prefill (``use_cache=True``) under the current patch.

    The peak is the highest number of tensor bytes held during the prefill above what was held when it started, as
    torch's allocator counts them: on CUDA ``torch.cuda.max_memory_allocated`` (after a reset), on CPU the stream of
    allocations and frees that ``torch.profiler`` records with ``profile_memory=True`` (every CPU tensor, unlike
    ``tracemalloc``; not the process's resident pages, which an allocator that reuses freed memory leaves unchanged;
    a tensor that existed before the prefill and is freed during it is not subtracted). When neither works the peak
    is ``None`` and ``peak_memory_method`` gives the reason.

    Returns:
        ``{"kv_cache_bytes": int, "peak_memory_bytes": int | None, "peak_memory_method": str}``.
    """
    from tokred.bench import kv_cache_bytes, peak_memory

    device = runner.model.device
    peak: int | None
    if device.type == "cuda":
        with peak_memory(device) as mem, torch.inference_mode():
            out = runner.model(**inputs, use_cache=True)
        peak, method = mem.delta_bytes, mem.method
    elif device.type == "cpu":
        out, peak, method = _profiled_prefill(runner, inputs)
    else:
        with torch.inference_mode():
            out = runner.model(**inputs, use_cache=True)
        peak, method = None, f"n/a: no tensor-accurate peak-memory reading on {device.type}"
    return {
        "kv_cache_bytes": kv_cache_bytes(hf.output_cache(out)),
        "peak_memory_bytes": peak,
        "peak_memory_method": method,
    }


def _profiled_prefill(runner: Runner, inputs: dict[str, torch.Tensor]) -> tuple[Any, int | None, str]:
    """A CPU prefill under ``torch.profiler`` with memory profiling: (outputs, peak bytes above the start, method)."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    try:
        # kineto prints to fd 2 when it starts and stops, and for each block freed that predates it (not counted: the
        # peak is that of what the prefill allocated); the same prefill already ran unprofiled, so nothing is lost
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            with torch.inference_mode():
                out = runner.model(**inputs, use_cache=True)
        with tempfile.TemporaryDirectory() as folder:
            trace = Path(folder) / "trace.json"
            prof.export_chrome_trace(str(trace))
            events = json.loads(trace.read_text()).get("traceEvents", [])
    except (RuntimeError, OSError, ValueError) as err:
        with torch.inference_mode():
            out = runner.model(**inputs, use_cache=True)
        return out, None, f"n/a: torch.profiler memory profiling failed ({type(err).__name__})"
    return out, peak_from_trace(events), "CPU: torch.profiler allocation events"


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block (C++ libraries that print past Python's sys.stderr)."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_from_trace(events: Sequence[dict[str, Any]]) -> int:
    """Highest running sum of the CPU ``[memory]`` events' ``Bytes`` (allocations +, frees -) of a chrome trace,
    in time order; 0 when nothing was allocated."""
    memory = [e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0]
    memory.sort(key=lambda e: float(e.get("ts", 0.0)))
    held = peak = 0
    for e in memory:
        held += int(e["args"].get("Bytes", 0))
        peak = max(peak, held)
    return peak


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
    return {
        "prefill_latency_s": pre.median,
        "prefill_latency_iqr_s": pre.iqr,
        "decode_latency_s": decode.median,
        "decode_latency_iqr_s": decode.iqr,
        **memory,
    }


# --------------------------------------------------------------------------------------------------- summary


def records_by_point(points: Sequence[Variant], records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{point id: {sample id: record}}``: each point's records are those of its label and options."""
    by_config: dict[str, dict[str, dict[str, Any]]] = {}
    for rec in records:
        key = json.dumps([rec["strategy"], rec.get("options")], sort_keys=True)
        by_config.setdefault(key, {})[str(rec["id"])] = rec
    return {p.id: by_config.get(config_key(p), {}) for p in points}


def summarise(
    points: list[Variant], records: Sequence[dict[str, Any]], seed: int, alpha: float = 0.05
) -> list[dict[str, Any]]:
    """One row per point: accuracy (+ 95 % bootstrap CI), agreement and McNemar p against the baseline, the paired
    tests against the other strategies at the same budget, FLOPs and token statistics."""
    from tokred.stats import bootstrap_ci, mcnemar_exact

    recs_of = records_by_point(points, records)
    base = recs_of[points[0].id]
    tests = pairwise_tests(points, recs_of, alpha)
    rows = []
    for p in points:
        recs = recs_of[p.id]
        ids = [i for i in recs if i in base] if p is not points[0] else list(recs)
        if not ids:
            continue
        correct = [bool(recs[i]["correct"]) for i in ids]
        acc, lo, hi = bootstrap_ci(correct, seed=seed)
        base_correct = [bool(base[i]["correct"]) for i in ids]
        agree = [normalize_answer(recs[i]["prediction"]) == normalize_answer(base[i]["prediction"]) for i in ids]
        rows.append(
            {
                **_point_fields(p),
                "n": len(ids),
                "accuracy": acc,
                "accuracy_ci_low": lo,
                "accuracy_ci_high": hi,
                "accuracy_by_type": _by_type(recs, ids),
                "agreement": sum(agree) / len(agree),
                "mcnemar_p": mcnemar_exact(correct, base_correct) if p is not points[0] else 1.0,
                **_pairwise_fields(p, tests),
                **_token_stats(recs, ids),
            }
        )
    return rows


def _point_fields(p: Variant) -> dict[str, Any]:
    return {
        "strategy": p.label,
        "id": p.id,
        "name": p.strategy.name,
        "options": p.options,
        "budget_knob": p.strategy.budget_knob,
        "knob_value": p.knob_value,
        "budget_kind": p.kind,
        "budget_target": p.target,
        "predicted_budget": p.predicted_budget,
        "on_target": p.on_target,
    }


def pairwise_tests(
    points: Sequence[Variant], recs_of: dict[str, dict[str, dict[str, Any]]], alpha: float = 0.05
) -> list[dict[str, Any]]:
    """Exact McNemar test of every pair of strategies at the same budget, Holm-corrected within each budget.

    The baseline and off-target points take no part. Each pair is tested on the samples both have records for; the
    Holm family is the ``m`` pairs at one budget (without ``--match``: all strategies as configured).

    Returns:
        One dict per pair: ``budget``, ``a``, ``b`` (point ids), ``n``, ``only_a``/``only_b`` (samples only that
        one got right), ``p``, ``p_holm`` and ``indistinguishable`` (``p_holm >= alpha``).
    """
    from itertools import combinations

    from tokred.stats import holm, mcnemar_exact

    groups: dict[float | None, list[Variant]] = {}
    for p in points[1:]:
        if p.on_target:
            groups.setdefault(p.target, []).append(p)
    tests: list[dict[str, Any]] = []
    for target, group in groups.items():
        pairs = []
        for a, b in combinations(group, 2):
            ids = sorted(set(recs_of[a.id]) & set(recs_of[b.id]))
            ca = [bool(recs_of[a.id][i]["correct"]) for i in ids]
            cb = [bool(recs_of[b.id][i]["correct"]) for i in ids]
            only_a = sum(x and not y for x, y in zip(ca, cb))
            only_b = sum(y and not x for x, y in zip(ca, cb))
            pair: dict[str, Any] = {"budget": target, "a": a.id, "b": b.id, "n": len(ids), "only_a": only_a,
                                    "only_b": only_b, "p": mcnemar_exact(ca, cb)}  # fmt: skip
            pairs.append(pair)
        for pair, adjusted in zip(pairs, holm([t["p"] for t in pairs])):
            pair["p_holm"] = adjusted
            pair["indistinguishable"] = adjusted >= alpha
        tests.extend(pairs)
    return tests


def _pairwise_fields(p: Variant, tests: Sequence[dict[str, Any]]) -> dict[str, Any]:
    mine = [(t["b"] if t["a"] == p.id else t["a"], t) for t in tests if p.id in (t["a"], t["b"])]
    return {
        "pairwise_p_holm": {other: t["p_holm"] for other, t in mine},
        "indistinguishable_from": [other for other, t in mine if t["indistinguishable"]],
    }


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
        ConfigError: For an entry of ``--strategies`` given twice, and under ``--match``: an option that sets the
            knob ``--match`` searches, or a strategy without a budget knob.
    """
    from tokred._api import get_strategy_class

    repeated = sorted({s for s in settings.strategies if settings.strategies.count(s) > 1})
    if repeated:
        raise ConfigError(
            f"-s {repeated[0]} is given twice; to compare two configurations of one strategy name them with options, "
            "e.g. -s fastv@keep_ratio=0.25 -s fastv@keep_ratio=0.5"
        )
    if settings.match is None:
        return
    kind, targets = settings.match
    budget = f"--match {kind}={','.join(f'{t:g}' for t in targets)}"
    for spec in settings.strategies:
        if spec == BASELINE:
            continue
        name, opts = spec_options(spec, settings)
        knob = get_strategy_class(name).budget_knob
        if knob is None:
            raise ConfigError(f"-s {spec} has no budget knob, so {budget} cannot set its budget; drop one of them")
        if knob in opts:
            raise ConfigError(
                f"{spec} sets {knob}={opts[knob]}, which conflicts with {budget}: --match sets {knob} itself; "
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
    dataset = load_dataset(settings.dataset, split=settings.split, limit=settings.limit, frames=settings.frames)
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
    points = variants
    if settings.match is not None:
        points = match_budgets(variants, settings, (text[0], visual[0]), runner, video=is_clip(samples))
    for point in distinct_configs(points):  # what only the model can refuse (depth, family) fails before any sample
        with patched(runner.model, point.strategy, is_clip(samples)):
            pass
    wanted = {s.id for s in samples}
    for point in points:
        done = log.done(point.label, point.options)
        todo = [s for s in samples if s.id not in done]
        evaluate_variant(runner, point, todo, settings, log.append_batch, progress)
    records = [r for p in distinct_configs(points) for r in log.matching(p.label, p.options) if r["id"] in wanted]
    rows = summarise(points, records, settings.seed)
    costs = measure_costs(runner, points, samples, settings)
    for row in rows:
        row.update(costs[row["id"]])
    info = _info(runner, settings, points, samples, dataset, log)
    info["pairwise"] = pairwise_tests(points, records_by_point(points, records))
    if settings.batch_sizes:
        info["batch_latency"] = batch_latency_table(runner, points, samples, settings)
    if settings.plot and settings.output is not None:
        shown = picture_points(points)
        picture = kept_patch_picture(runner, shown, samples[: settings.picture_samples], settings.output / "kept.png")
        info["kept_patch_picture"] = str(picture) if picture else None
    return CompareResult(rows=rows, records=records, settings=settings, info=info)


def _info(
    runner: Runner, settings: CompareSettings, points: list[Variant], samples: list[Sample], dataset: Any, log: Any
) -> dict[str, Any]:
    from tokred.stats import HOLM_NOTE

    return {
        "model": runner.name,
        "samples": len(samples),
        "dataset_errors": [str(e) for e in _errors(dataset)],
        "log_healed_bytes": log.healed,
        "off_target": off_target_notes(points, settings.match_tolerance),
        "paired_tests": HOLM_NOTE,
    }


def picture_points(points: list[Variant]) -> list[Variant]:
    """The points drawn in ``kept.png``: the baseline and every strategy at the middle ``--match`` target."""
    targets = sorted({p.target for p in points[1:] if p.target is not None})
    if not targets:
        return points
    middle = targets[len(targets) // 2]
    return [points[0], *(p for p in points[1:] if p.target == middle)]


def kept_patch_picture(runner: Runner, points: list[Variant], samples: Sequence[Sample], path: Path) -> Path | None:
    """Draw which patches each point kept for a few samples, on the image as the model saw it (needs a model whose
    images form a token grid; ``None`` otherwise)."""
    from tokred.plots import kept_patch_figure

    grid = runner.frame_grid if is_clip(samples) else runner.image_grid
    if grid is None or not samples:
        return None
    inputs = runner.encode(samples)
    depths, groups = survival_maps(runner, points, inputs, is_clip(samples))
    return kept_patch_figure(model_view(runner, inputs, samples), depths, grid, path, groups)


def survival_maps(
    runner: Runner, points: Sequence[Variant], inputs: dict[str, torch.Tensor], clip: bool = False
) -> tuple[dict[str, list[list[float] | None]], dict[str, list[list[int] | None]]]:
    """Per point and sample, one prefill each: the share of decoder layers that process each patch's token (see
    [`survival_depth`][tokred.plots.survival_depth]) and the token each patch went into (see
    [`token_groups`][tokred.plots.token_groups]).

    Returns:
        ``({point id: [depths per sample]}, {point id: [groups per sample]})``.
    """
    from tokred.plots import survival_depth, token_groups

    ids, image_id = inputs["input_ids"], runner.image_token_id
    layers = int(text_config_of(runner.model).num_hidden_layers)
    depths: dict[str, list[list[float] | None]] = {}
    groups: dict[str, list[list[int] | None]] = {}
    for p in points:
        with patched(runner.model, p.strategy, clip) as handle, torch.inference_mode():
            runner.model.generate(**inputs, max_new_tokens=1, do_sample=False)
            stats = None if handle is None else handle.stats
        depths[p.id] = [survival_depth(stats, ids, image_id, b, layers) for b in range(ids.shape[0])]
        groups[p.id] = [token_groups(stats, image_id, ids, b) for b in range(ids.shape[0])]
    return depths, groups


def model_view(runner: Runner, inputs: dict[str, torch.Tensor], samples: Sequence[Sample]) -> list[Any]:
    """The images as the model saw them (its processor's crop and resize, undone normalisation), one per sample;
    the samples' own images when the processor does not say how it normalised."""
    from PIL import Image

    proc = getattr(getattr(runner, "processor", None), "image_processor", None)
    pixels = inputs.get("pixel_values")
    mean, std = getattr(proc, "image_mean", None), getattr(proc, "image_std", None)
    if pixels is None or pixels.dim() != 4 or pixels.shape[0] != len(samples) or mean is None or std is None:
        return [s.image for s in samples]
    scale = float(getattr(proc, "rescale_factor", 1 / 255) or 1 / 255)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    rgb = ((pixels.float().cpu() * sd + m) / scale).clamp(0, 255).round().to(torch.uint8)  # (B, 3, H, W)
    return [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in rgb]


def _errors(dataset: Any) -> list[Any]:
    return list(getattr(dataset, "errors", []) or [])
