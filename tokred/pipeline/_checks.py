"""Run-time checks of what plugin components return, so that a broken plugin fails loudly instead of silently.

The conformance suite (`tokred.testing`) tests a plugin on synthetic inputs; these checks run on every real call and
are cheap (shapes, dtypes, one NaN reduction). Each failure is one
[`PluginOutputError`][tokred.errors.PluginOutputError] naming the component, the plugin that registered it and what
was expected.
"""

from __future__ import annotations

from typing import Any

import torch

from tokred.adapters.base import LayerPlan
from tokred.errors import ConfigError, PluginOutputError

_PROBE_TOKENS = 576  # visual tokens used to ask a scheduler whether it reduces anything at a depth
_DEEP = 1024  # a depth at which any schedule that starts late does reduce


def describe_component(component: Any) -> str:
    """``"scorer 'fastv' (plugin tokred.strategies.fastv)"``: how errors name a component."""
    kind = str(getattr(component, "kind", "component"))
    name = str(getattr(component, "name", type(component).__name__))
    try:
        from tokred._plugins import get_registries

        plugin = get_registries().by_kind(kind).plugin(name)
    except Exception:  # noqa: BLE001 - an unregistered instance has no plugin
        plugin = f"not registered, class {type(component).__module__}.{type(component).__qualname__}"
    return f"{kind} '{name}' (plugin {plugin})"


class _Who:
    """Formats as ``describe_component(component)``, looked up only when an error message is built."""

    def __init__(self, component: Any) -> None:
        self.component = component

    def __format__(self, spec: str) -> str:
        return describe_component(self.component)


def check_scores(
    scores: Any, hidden: torch.Tensor, visual: torch.Tensor, scorer: Any, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """Check a scorer's output at an LLM layer: a floating tensor of shape (B, N) without NaN on visual tokens.

    Args:
        scores: What ``scorer.score`` returned.
        hidden: The layer's hidden states, shape (B, N, C).
        visual: Which of the N tokens are reducible visual tokens, shape (B, N) bool.
        scorer: The scorer (named in the error).
        allowed: Mask mode: tokens still visible, shape (B, N) bool (pruned ones may score anything).

    Returns:
        ``scores`` unchanged.

    Raises:
        PluginOutputError: For a non-tensor, a wrong shape (e.g. (B, V) instead of (B, N)), a non-floating dtype, or
            NaN scores on visual tokens.
    """
    b, n = int(hidden.shape[0]), int(hidden.shape[1])
    who = _Who(scorer)
    if not torch.is_tensor(scores):
        raise PluginOutputError(f"{who} returned {type(scores).__name__}; expected a float tensor of shape ({b}, {n})")
    if tuple(scores.shape) != (b, n):
        hint = ""
        if scores.dim() == 2 and scores.shape[0] == b and scores.shape[1] == int(visual.sum(-1).max()):
            hint = " (one score per visual token only; score every token of the sequence, visual ones are used)"
        elif scores.dim() == 2 and tuple(scores.shape) == (n, b):
            hint = " (transposed)"
        raise PluginOutputError(
            f"{who} returned scores of shape {tuple(scores.shape)}; expected (batch, sequence) = ({b}, {n}){hint}"
        )
    if not scores.is_floating_point():
        raise PluginOutputError(f"{who} returned scores of dtype {scores.dtype}; expected a floating dtype")
    nan = torch.isnan(scores) & visual if allowed is None else torch.isnan(scores) & visual & allowed
    if bool(nan.any()):
        raise PluginOutputError(
            f"{who} returned NaN scores for {int(nan.sum())} visual tokens; expected finite scores (or -inf to drop "
            "a token)"
        )
    return scores


def check_merge(result: Any, x: torch.Tensor, merger: Any, grid: tuple[int, int] | None) -> Any:
    """Check a pre-LLM merger's output for one image: shapes, dtypes, provenance range and ``output_count``.

    Args:
        result: What ``merger.merge`` returned (a ``MergeResult``).
        x: The merger's input, shape (1, n, C).
        merger: The merger (named in the error).
        grid: The grid given to the merger (for ``output_count``).

    Returns:
        ``result`` unchanged.

    Raises:
        PluginOutputError: For a wrong type or shape, a dtype other than the input's, provenance out of range, NaN
            features, or a count different from the merger's own ``output_count``.
    """
    who = _Who(merger)
    n, c = int(x.shape[1]), int(x.shape[2])
    out, source = getattr(result, "x", None), getattr(result, "source", None)
    if not torch.is_tensor(out) or not torch.is_tensor(source):
        raise PluginOutputError(
            f"{who} returned {type(result).__name__}; expected a MergeResult with tensors x, source"
        )
    if out.dim() != 3 or out.shape[0] != 1 or out.shape[2] != c:
        raise PluginOutputError(
            f"{who} returned x of shape {tuple(out.shape)}; expected (1, M, {c}) for input (1, {n}, {c})"
        )
    if out.dtype != x.dtype:
        raise PluginOutputError(f"{who} returned x of dtype {out.dtype}; expected the input's dtype {x.dtype}")
    if tuple(source.shape) != (1, n) or source.is_floating_point() or source.dtype == torch.bool:
        raise PluginOutputError(
            f"{who} returned source of shape {tuple(source.shape)} and dtype {source.dtype}; expected an integer "
            f"tensor of shape (1, {n}): for each input token its output index, or -1 if dropped"
        )
    m = int(out.shape[1])
    if n and (int(source.min()) < -1 or int(source.max()) >= m):
        raise PluginOutputError(f"{who} returned source indices outside [-1, {m - 1}] for {m} outputs")
    if bool(torch.isnan(out).any()):
        raise PluginOutputError(f"{who} returned NaN features")
    try:
        expected = int(merger.output_count(n, grid))
    except NotImplementedError:
        return result
    if expected != m:
        raise PluginOutputError(
            f"{who} returned {m} tokens for {n} inputs, but its output_count({n}, grid={grid}) says {expected}; "
            "FLOPs and --match rely on output_count, so the two must agree"
        )
    return result


def check_schedule_depth(strategy: Any, num_layers: int) -> None:
    """Refuse a schedule that reduces nothing at this depth although it would in a deeper model (it starts past the
    last layer, e.g. ``aim-prune`` with ``l1=40`` on a 24-layer decoder).

    Raises:
        ConfigError: Naming the strategy, its schedule and the depth.
    """
    scheduler = getattr(strategy, "scheduler", None)
    if scheduler is None:
        return
    here = scheduler.budgets(num_layers, _PROBE_TOKENS)
    if min(here) < _PROBE_TOKENS:
        return
    try:
        deep = scheduler.budgets(_DEEP, _PROBE_TOKENS)
    except ConfigError:
        return
    first = next((i for i, b in enumerate(deep) if b < _PROBE_TOKENS), None)
    if first is None:
        return  # a schedule that keeps everything at any depth (keep_ratio=1): nothing wrong with the depth
    raise ConfigError(
        f"strategy '{strategy.name}' reduces nothing on this model: its schedule ({scheduler!r}) starts dropping at "
        f"layer {first}, but the model has {num_layers} decoder layers; choose layers below {num_layers}"
    )


def planned_layers(strategy: Any, num_layers: int) -> LayerPlan:
    """The decoder layers the strategy's in-LLM schedule prunes and scores (as ``RunState`` plans them, for a probe
    count of visual tokens; the video variant of the schedule included), for the patch-time checks."""
    scheduler = getattr(strategy, "scheduler", None)
    routes = getattr(strategy, "router", None) is not None
    if scheduler is None:
        return LayerPlan(routes=routes)
    pruning: set[int] = set()
    for sched in {id(s): s for s in (scheduler, scheduler.for_video())}.values():
        try:
            budgets = sched.budgets(num_layers, _PROBE_TOKENS)
        except ConfigError:
            continue
        if getattr(sched, "adaptive", False):  # the scorer sizes every layer >= 1
            pruning |= set(range(1, num_layers))
        else:
            pruning |= {i for i in range(1, num_layers) if budgets[i] < budgets[i - 1]}
    scorer = strategy.scorer
    scoring: set[int] = set()
    if scorer is not None and scorer.query_rows != "none":
        scoring = pruning if scorer.scores_own_layer else {i - 1 for i in pruning}
    return LayerPlan(pruning=tuple(sorted(pruning)), scoring=tuple(sorted(scoring)), routes=routes)
