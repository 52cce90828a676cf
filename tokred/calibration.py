"""Offline calibration of per-layer recipes (FitPrune's deletions, PrefixKV's KV retention) and the recipe file.

A recipe is a JSON file (format ``tokred-recipe``, version 1)::

    {"format": "tokred-recipe", "version": 1, "method": "fitprune", "model": "<name_or_path>", "num_layers": 30,
     "budget": {"flops": 0.5}, "samples": 64, "dataset": "shapes:val", "convention": "llm-viewer",
     "per_layer": [...], "n_visual": 256.0, "achieved": {"flops": 0.497}, "details": {...}}

``per_layer`` holds, for ``fitprune``, the mean number of visual tokens deleted on entering each decoder layer
(``n_visual`` at calibration; layer 0 deletes none), and for ``prefixkv`` the share of the prompt's KV entries each
layer keeps. Recipes are cached per method, model and budget under ``<cache_dir>/recipes`` (``$TOKRED_CACHE_DIR``),
so that a strategy without ``recipe=PATH`` calibrates once and reuses the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from tokred import __version__
from tokred.errors import ConfigError

FORMAT, VERSION = "tokred-recipe", 1
METHODS = ("fitprune", "prefixkv")
CALIBRATION_DATASET = "shapes:val"  # never the test split that compare evaluates


def model_name(model: Any) -> str:
    """The identity a recipe records for a model: its ``name_or_path``, else its class name."""
    return str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


def decoder_depth(model: Any) -> int:
    """Decoder layers of a multimodal model (its text config's ``num_hidden_layers``)."""
    cfg = getattr(model.config, "text_config", None) or model.config
    return int(cfg.num_hidden_layers)


def cache_path(method: str, model: str, kind: str, value: float) -> Path:
    """Where the cached recipe of ``method`` for ``model`` at budget ``kind=value`` lives."""
    from tokred.eval.reference import cache_dir

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", model.strip("/").split("/")[-1])[:40] or "model"
    digest = hashlib.sha256(model.encode()).hexdigest()[:10]
    return cache_dir() / "recipes" / method / f"{slug}-{digest}" / f"{kind}-{value:g}.json"


def save_recipe(path: str | Path, recipe: dict[str, Any]) -> Path:
    """Write a recipe atomically (a temporary file renamed into place)."""
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(recipe, indent=1) + "\n")
    tmp.replace(out)
    return out


def load_recipe(path: str | Path, method: str, num_layers: int | None = None) -> dict[str, Any]:
    """Read and check a recipe file.

    Raises:
        ConfigError: For a missing or unreadable file, another format/version/method, or a depth that is not the
            model's.
    """
    p = Path(path).expanduser()
    try:
        recipe = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        why = type(err).__name__
        raise ConfigError(f"recipe {str(p)!r} cannot be read ({why}); make one with `tokred calibrate`") from None
    if not isinstance(recipe, dict) or recipe.get("format") != FORMAT or recipe.get("version") != VERSION:
        raise ConfigError(
            f"recipe {str(p)!r} is not a {FORMAT} version {VERSION} file; make one with `tokred calibrate`"
        )
    if recipe.get("method") != method:
        raise ConfigError(f"recipe {str(p)!r} is for '{recipe.get('method')}', not '{method}'")
    per_layer = recipe.get("per_layer")
    if not isinstance(per_layer, list) or len(per_layer) != int(recipe.get("num_layers", -1)):
        raise ConfigError(f"recipe {str(p)!r}: 'per_layer' must have one number per layer ('num_layers')")
    if num_layers is not None and len(per_layer) != num_layers:
        raise ConfigError(
            f"recipe {str(p)!r} was calibrated for {len(per_layer)} decoder layers ({recipe.get('model')}); this "
            f"model has {num_layers}. Calibrate it for this model: tokred calibrate {method} --model ..."
        )
    return recipe


def make_recipe(method: str, model: str, num_layers: int, budget: dict[str, float], **fields: Any) -> dict[str, Any]:
    """A recipe dictionary with the header fields filled in."""
    head = {"format": FORMAT, "version": VERSION, "method": method, "model": model, "num_layers": num_layers}
    return {**head, "budget": budget, "tokred": __version__, **fields}


def resolve_recipe(
    method: str, model: Any, kind: str, value: float, path: str | None, samples: int, **options: Any
) -> dict[str, Any]:
    """The recipe a strategy applies to ``model``: ``path``, else the cached one, else a fresh calibration (cached).

    Calibrating needs the model's processor: it is loaded from the model's ``name_or_path`` folder (the reference
    model and any model loaded from a local folder or the hub cache have one).

    Raises:
        ConfigError: If there is no recipe and no processor to calibrate with (the message names the command).
    """
    depth = decoder_depth(model)
    if path is not None:
        return load_recipe(path, method, depth)
    cached = cache_path(method, model_name(model), kind, value)
    if cached.exists():
        return load_recipe(cached, method, depth)
    runner = runner_for(model, method, kind, value)
    recipe = calibrate(method, runner, kind, value, samples=samples, **options)
    save_recipe(cached, recipe)
    return recipe


def runner_for(model: Any, method: str, kind: str, value: float) -> Any:
    """An evaluation runner (model + processor) to calibrate ``model`` with, or a ``ConfigError`` saying what to do."""
    from tokred.eval.runner import HFRunner

    name = model_name(model)
    hint = (
        f"strategy '{method}' has no recipe for {name} at {kind}={value:g}: pass recipe=PATH, or make one with "
        f"`tokred calibrate {method} --model {name} --budget {kind}={value:g}` (cached for later runs)"
    )
    if not Path(name).expanduser().is_dir():
        raise ConfigError(hint)
    try:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(name)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{hint} (no processor in {name}: {type(err).__name__})") from None
    return HFRunner(model, processor, name=name)


def calibration_inputs(runner: Any, samples: int) -> list[dict[str, torch.Tensor]]:
    """One single-sample input batch per calibration sample of the built-in benchmark's validation split."""
    from tokred.eval.datasets import load_dataset

    data = load_dataset(CALIBRATION_DATASET, limit=samples)
    return [runner.encode([s]) for s in data]


def calibrate(method: str, runner: Any, kind: str, value: float, *, samples: int, **options: Any) -> dict[str, Any]:
    """Calibrate a recipe of ``method`` for the runner's model at budget ``kind=value``.

    Raises:
        ConfigError: For an unknown method or a budget kind the method does not take.
    """
    expected = {"fitprune": "flops", "prefixkv": "retention"}
    if method not in expected:
        raise ConfigError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    if kind != expected[method]:
        raise ConfigError(f"{method} is calibrated for a {expected[method]} budget (--budget {expected[method]}=...)")
    inputs = calibration_inputs(runner, samples)
    if method == "fitprune":
        from tokred.calibrate_fitprune import fit_recipe

        body = fit_recipe(runner.model, inputs, value, **options)
    else:
        from tokred.calibrate_prefixkv import fit_retention

        body = fit_retention(runner.model, inputs, value, **options)
    name = model_name(runner.model)
    extra = {"samples": len(inputs), "dataset": CALIBRATION_DATASET}
    return make_recipe(method, name, decoder_depth(runner.model), {kind: value}, **extra, **body)


def calibrated_match(strategy: Any, kind: str, target: float, runner: Any, measure: Any) -> Any:
    """``tokred compare --match`` for a strategy calibrated to a budget (``calibrated_budget``, e.g. fitprune's
    ``"flops"``): calibrate (or reuse the cached recipe) at the target instead of searching its knob.

    Returns:
        A `tokred.budget.KnobSearch`, or ``None`` for a strategy that is not calibrated (search its knob instead).

    Raises:
        ConfigError: If the strategy is calibrated for another kind of budget than ``kind``.
    """
    from tokred.budget import KnobSearch

    wanted = getattr(type(strategy), "calibrated_budget", None)
    if wanted is None:
        return None
    if wanted != kind:
        raise ConfigError(f"strategy '{strategy.name}' is calibrated for a {wanted} budget: use --match {wanted}=...")
    chosen = strategy.with_budget(target)
    c = chosen.config
    path = cache_path(strategy.name, model_name(runner.model), kind, target)
    if path.exists():
        recipe = load_recipe(path, strategy.name, decoder_depth(runner.model))
    else:
        recipe = calibrate(strategy.name, runner, kind, target, samples=c.samples, convention=c.convention)
        save_recipe(path, recipe)
    chosen.use_recipe(recipe)
    return KnobSearch(target, measure(chosen), target, chosen)
