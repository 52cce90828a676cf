"""Predict, without running a model, how many tokens each decoder layer processes under a strategy.

Used by ``tokred flops`` (analytical breakdowns for well-known configs) and by ``tokred compare --match`` (to search
each strategy's budget knob for a target budget before measuring it). Measured runs report the real counts in
``handle.stats.tokens_per_layer``; this module is the model-free prediction of the same numbers.

Example:
    >>> import tokred
    >>> from tokred.budget import predict_tokens_per_layer
    >>> predict_tokens_per_layer(tokred.create_strategy("fastv"), num_layers=4, text_tokens=10, visual_tokens=100)
    [110, 110, 60, 60]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tokred._components import Strategy
from tokred.errors import ConfigError


def visual_after_merge(
    strategy: Strategy,
    visual_tokens: int,
    *,
    images: int = 1,
    grid: tuple[int, int] | None = None,
    vision_layers: int | None = None,
    feature_layer: int = -1,
    video: bool = False,
) -> int:
    """Visual tokens entering the LLM after the strategy's vision-tower or pre-LLM merger.

    Args:
        strategy: The strategy.
        visual_tokens: Visual tokens per image without reduction.
        images: Images (or frames) per sample; each is merged on its own.
        grid: Token grid of one image, when the merger needs it (pooling).
        vision_layers: Vision-tower depth (needed for vision-stage mergers).
        feature_layer: The model's ``vision_feature_layer``: the tower layers up to it merge (-1: all, -2: all but
            the last; see `tokred.pipeline._vision.merging_blocks`).
        video: The ``images`` are the frames of one video: the merger's video variant (``for_video``) applies, and a
            temporal merger (EVS) reduces the whole clip.
    """
    merger = strategy.merger
    if merger is not None and video:
        merger = merger.for_video()
    if merger is not None and merger.temporal and (video or images > 1):
        # one clip of `images` frames (the generic path reads a sample's images as the frames of one clip); the
        # frame's grid tells the merger the frame count
        return merger.output_count(visual_tokens * images, grid or (1, visual_tokens))
    if merger is None:
        return visual_tokens * images
    if merger.stage == "vision":
        if vision_layers is None:
            raise ConfigError(f"strategy '{strategy.name}' merges inside the vision tower: give vision_layers")
        from tokred.pipeline._vision import merging_blocks, tower_counts

        counts = tower_counts(merger, vision_layers, visual_tokens)
        return counts[merging_blocks(vision_layers, feature_layer)] * images
    return merger.output_count(visual_tokens, grid) * images


def predict_tokens_per_layer(
    strategy: Strategy,
    *,
    num_layers: int,
    text_tokens: int,
    visual_tokens: int,
    images: int = 1,
    grid: tuple[int, int] | None = None,
    vision_layers: int | None = None,
    feature_layer: int = -1,
    video: bool = False,
) -> list[int]:
    """Sequence length each decoder layer processes (text tokens are never reduced).

    For a routing strategy (gamma-MoD) the visual tokens are taken as the routable ones: the instruction text before
    the image, also routable at run time, is not known here, so the prediction slightly overestimates the FLOPs
    that ``tokred compare`` measures.

    Args:
        strategy: The strategy.
        num_layers: Decoder layers.
        text_tokens: Non-visual tokens of the prompt.
        visual_tokens: Visual tokens per image before reduction.
        images: Images per sample.
        grid: Token grid of one image (pooling needs it; a square count is inferred).
        vision_layers: Vision-tower depth, for vision-stage mergers.
        feature_layer: The model's ``vision_feature_layer`` (see `visual_after_merge`).
        video: The images are the frames of one video (see `visual_after_merge`); the scheduler's video variant
            applies.

    Returns:
        ``num_layers`` sequence lengths.
    """
    visual = visual_after_merge(
        strategy,
        visual_tokens,
        images=images,
        grid=grid,
        vision_layers=vision_layers,
        feature_layer=feature_layer,
        video=video,
    )
    if strategy.router is not None:  # MoD layers: the visual tokens a layer's capacity skips are not processed
        router = strategy.router
        mod = set(router.layers(num_layers))
        return [text_tokens + (router.capacity(i, visual) if i in mod else visual) for i in range(num_layers)]
    if strategy.scheduler is None:
        return [text_tokens + visual] * num_layers
    scheduler = strategy.scheduler.for_video() if video else strategy.scheduler
    budgets = scheduler.budgets(num_layers, visual)
    return [text_tokens + b for b in budgets]


@dataclass
class KnobSearch:
    """Result of searching a strategy's budget knob.

    Attributes:
        value: Knob value found.
        achieved: Budget measure reached with it (e.g. relative FLOPs).
        target: Budget measure asked for.
        strategy: The strategy with the knob set.
    """

    value: float
    achieved: float
    target: float
    strategy: Strategy

    @property
    def relative_error(self) -> float:
        """``|achieved - target| / target``."""
        return abs(self.achieved - self.target) / self.target if self.target else abs(self.achieved)


def search_knob(
    strategy: Strategy,
    measure: Callable[[Strategy], float],
    target: float,
    *,
    steps: int = 40,
) -> KnobSearch:
    """Find the knob value whose ``measure`` (monotone in the knob) is closest to ``target``.

    Bisection on the knob's bounds for float knobs; an exhaustive scan of the (bounded) range for integer knobs.

    Raises:
        ConfigError: If the strategy has no budget knob.
    """
    knob = strategy.budget_knob
    if knob is None:
        raise ConfigError(f"strategy '{strategy.name}' has no budget knob to search")
    lo, hi, is_int = _knob_bounds(strategy, knob)
    if is_int:
        candidates: Sequence[float] = range(int(lo), int(hi) + 1)
        best = min(candidates, key=lambda v: abs(measure(strategy.with_budget(v)) - target))
        chosen = strategy.with_budget(best)
        return KnobSearch(best, measure(chosen), target, chosen)
    sign = strategy.budget_direction
    for _ in range(steps):  # measure grows with sign * knob
        mid = (lo + hi) / 2
        if (measure(strategy.with_budget(mid)) - target) * sign > 0:
            hi = mid
        else:
            lo = mid
    options = [lo, hi]
    best_f = min(options, key=lambda v: abs(measure(strategy.with_budget(v)) - target))
    chosen = strategy.with_budget(best_f)
    return KnobSearch(best_f, measure(chosen), target, chosen)


def _knob_bounds(strategy: Strategy, knob: str) -> tuple[float, float, bool]:
    field = type(strategy.config).model_fields[knob]
    lo, hi = -math.inf, math.inf
    for meta in field.metadata:
        for attr in ("ge", "gt"):
            if getattr(meta, attr, None) is not None:
                lo = float(getattr(meta, attr))
        for attr in ("le", "lt"):
            if getattr(meta, attr, None) is not None:
                hi = float(getattr(meta, attr))
    is_int = field.annotation is int
    if is_int:
        hi = min(hi, 256.0)  # integer knobs (ToMe's r, pooling's kernel) are scanned; keep the scan short
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"budget knob '{knob}' of '{strategy.name}' needs finite bounds to be searched")
    if any(getattr(m, "gt", None) is not None for m in field.metadata):  # open bounds: search just inside them
        lo = lo + 1e-6 if not is_int else lo + 1
    if any(getattr(m, "lt", None) is not None for m in field.metadata):
        hi = hi - 1e-6 if not is_int else hi - 1
    return lo, hi, is_int


def relative_flops_measure(
    text_config: Any,
    *,
    text_tokens: int,
    visual_tokens: int,
    images: int = 1,
    grid: tuple[int, int] | None = None,
    vision_layers: int | None = None,
    feature_layer: int = -1,
    convention: str = "llm-viewer",
    video: bool = False,
) -> Callable[[Strategy], float]:
    """A ``measure`` for :func:`search_knob`: predicted prefill FLOPs relative to the unreduced model.

    ``video``: the images are the frames of one clip, so video variants apply (as in `predict_tokens_per_layer`).
    """
    from tokred.flops import TextDims, prefill_flops

    layers = TextDims.from_config(text_config).num_hidden_layers
    base = prefill_flops(text_config, [text_tokens + visual_tokens * images] * layers, convention)  # type: ignore[arg-type]

    def measure(strategy: Strategy) -> float:
        tokens = predict_tokens_per_layer(
            strategy,
            num_layers=layers,
            text_tokens=text_tokens,
            visual_tokens=visual_tokens,
            images=images,
            grid=grid,
            vision_layers=vision_layers,
            feature_layer=feature_layer,
            video=video,
        )
        return prefill_flops(text_config, tokens, convention) / base  # type: ignore[arg-type]

    return measure
