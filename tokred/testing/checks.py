"""Conformance checks that every merger, scorer, scheduler, router and strategy must pass (built-ins included).

Plugin authors run the same checks on their components:

Example:
    >>> import tokred
    >>> from tokred.testing import check_component
    >>> check_component(tokred.create_strategy("fastv"))   # raises AssertionError naming the failed check

or, in a pytest module, one test per (component, check) pair::

    from tokred.testing import parametrize_with_checks

    @parametrize_with_checks([MyScorer(), MyStrategy()])
    def test_conformance(component, check):
        check(component)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from tokred._components import (
    BaseComponent,
    BaseMerger,
    BaseRouter,
    BaseScheduler,
    BaseScorer,
    ComposedStrategy,
    MergeContext,
    RouteContext,
    ScoreContext,
    Strategy,
)
from tokred._config import ComponentConfig

Check = Callable[[Any], None]
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def check_name(component: BaseComponent) -> None:
    """The name is short, lower-case kebab/snake case."""
    assert _NAME.match(component.name), f"name {component.name!r} must be lower-case letters, digits, '-', '_', '.'"
    assert len(component.name) <= 32, f"name {component.name!r} is longer than 32 characters"


def check_docstring(component: BaseComponent) -> None:
    """The class has a docstring whose first paragraph says what it does."""
    assert type(component).summary(), f"{type(component).__qualname__} needs a docstring"


def check_config(component: BaseComponent) -> None:
    """``Config`` forbids unknown options, is frozen, and documents (and bounds, if numeric) every field."""
    cfg_cls = type(component.config)
    assert issubclass(cfg_cls, ComponentConfig), "Config must subclass tokred.ComponentConfig"
    assert cfg_cls.model_config.get("extra") == "forbid", "Config must set extra='forbid'"
    assert cfg_cls.model_config.get("frozen") is True, "Config must be frozen"
    for name, field in cfg_cls.model_fields.items():
        assert field.description, f"option '{name}' needs a description"
        if field.annotation in (int, float):
            bounded = any(getattr(m, a, None) is not None for m in field.metadata for a in ("ge", "gt", "le", "lt"))
            assert bounded, f"numeric option '{name}' needs bounds (ge/gt/le/lt)"


def check_config_roundtrip(component: BaseComponent) -> None:
    """Dumping the config and building the component again gives an equal config."""
    again = type(component.config)(**component.config.model_dump())
    assert again == component.config, "config does not survive model_dump -> Config(**dump)"


def check_rejects_unknown_option(component: BaseComponent) -> None:
    """An unknown option raises ``ConfigError`` (never silently ignored)."""
    from tokred.errors import ConfigError

    try:
        type(component)(definitely_not_an_option=1)
    except ConfigError as err:
        assert "definitely_not_an_option" in str(err), "the error must name the unknown option"
    else:
        raise AssertionError("an unknown option was accepted")


def check_scheduler_budgets(scheduler: BaseScheduler) -> None:
    """Budgets have one entry per layer, are non-increasing and stay within [0, N] for many depths."""
    from tokred.errors import ConfigError

    for layers in (2, 4, 8, 28, 32):
        for tokens in (0, 1, 7, 64, 576):
            try:
                budgets = scheduler.budgets(layers, tokens)
            except ConfigError:
                continue  # a depth the configuration cannot apply to must raise ConfigError, nothing else
            assert len(budgets) == layers
            assert all(0 <= b <= tokens for b in budgets), budgets
            assert all(b2 <= b1 for b1, b2 in zip(budgets, budgets[1:])), budgets


def _merge_inputs(seed: int = 0, merger: BaseMerger | None = None) -> tuple[torch.Tensor, MergeContext]:
    if merger is not None and merger.tower_inputs:  # a synthetic vision tower consistent with the features
        from tokred.testing.towers import synthetic_tower

        x, tower = synthetic_tower(2, 16, 8, seed=seed)
        return x, MergeContext(grid=(4, 4), tower=tower)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 8, generator=g)  # (B, N, C)
    return x, MergeContext(grid=(4, 4))


def _row_ctx(ctx: MergeContext, i: int) -> MergeContext:
    """The context of batch row ``i`` alone (per-row fields sliced)."""
    return ctx if ctx.tower is None else dataclasses.replace(ctx, tower=ctx.tower.row(i))


def _vision_ctx(merger: BaseMerger, x: torch.Tensor) -> MergeContext:
    budgets = merger.layer_budgets(4, x.shape[1]) or [x.shape[1]] * 4
    target = next((b for b in budgets if b < x.shape[1]), x.shape[1])
    return MergeContext(target=target, grid=(4, 4), layer=0, num_layers=4)


def check_merger_output(merger: BaseMerger) -> None:
    """Output count matches ``output_count``; provenance partitions the input; dtype and device are kept."""
    x, ctx = _merge_inputs(merger=merger)
    if merger.stage == "vision":
        ctx = _vision_ctx(merger, x)
    out = merger.merge(x, ctx)
    b, n, c = x.shape
    expected = ctx.target if merger.stage == "vision" and ctx.target is not None else merger.output_count(n, ctx.grid)
    assert out.x.shape == (b, expected, c), f"merge returned {tuple(out.x.shape)}, expected {(b, expected, c)}"
    assert out.x.dtype == x.dtype and out.x.device == x.device, "merge must keep dtype and device"
    assert out.source.shape == (b, n), "source must give an output index (or -1) for every input"
    assert int(out.source.min()) >= -1 and int(out.source.max()) < expected, "source indices out of range"
    extra = set() if out.class_slot is None else {out.class_slot}  # the tower's class token: no input went into it
    for row in out.source:
        used = set(row[row >= 0].tolist())
        assert used == set(range(expected)) - extra, "every output must come from at least one input"
    if out.size is not None:
        assert torch.equal(out.size.sum(-1), torch.full((b,), float(n), dtype=out.size.dtype)), "sizes must sum to N"


def check_merger_batch_independence(merger: BaseMerger) -> None:
    """Merging a batch equals merging each row alone, and repeating the call gives the same result."""
    x, ctx = _merge_inputs(seed=1, merger=merger)
    if merger.stage == "vision":
        ctx = _vision_ctx(merger, x)
    full = merger.merge(x, ctx)
    again = merger.merge(x, ctx)
    assert torch.equal(full.x, again.x), "merge is not deterministic"
    for i in range(x.shape[0]):
        single = merger.merge(x[i : i + 1], _row_ctx(ctx, i))
        torch.testing.assert_close(single.x[0], full.x[i], rtol=1e-5, atol=1e-6)
        assert torch.equal(single.source[0], full.source[i]), "provenance depends on other batch rows"


def _score_ctx(scorer: BaseScorer, seed: int = 0) -> ScoreContext:
    g = torch.Generator().manual_seed(seed)
    b, n, h, d = 2, 12, 2, 4
    visual = torch.zeros(b, n, dtype=torch.bool)
    visual[:, 2:10] = True
    rows = {"none": 0, "last": 1, "text": n - 8, "all": n}[scorer.query_rows]
    index = torch.arange(n)[n - rows :] if scorer.query_rows != "text" else torch.nonzero(~visual[0])[:, 0]
    return ScoreContext(
        visual_mask=visual,
        attention_mask=torch.ones(b, n, dtype=torch.bool),
        features=torch.randn(b, n, 8, generator=g),
        hidden_states=torch.randn(b, n, 8, generator=g),
        query=torch.randn(b, h, rows, d, generator=g) if rows else None,
        query_index=index.expand(b, -1) if rows else None,
        key=torch.randn(b, 1, n, d, generator=g),
        scaling=d**-0.5,
        layer=1,
        num_layers=4,
    )


def check_scorer_output(scorer: BaseScorer) -> None:
    """Scores have shape (B, N), are finite on real tokens and deterministic."""
    ctx = _score_ctx(scorer)
    scores = scorer.score(ctx)
    assert scores.shape == ctx.visual_mask.shape, f"scores have shape {tuple(scores.shape)}, expected (B, N)"
    assert torch.isfinite(scores[ctx.visual_mask]).all(), "scores of visual tokens must be finite"
    assert torch.equal(scores, scorer.score(ctx)), "scores are not deterministic"


def check_router_output(router: BaseRouter) -> None:
    """MoD layers are distinct, ascending and never layer 0; capacities fit; decisions are (B, N), finite and
    deterministic. A trained router without weights must refuse with ``ConfigError`` (never route by default)."""
    from tokred.errors import ConfigError

    for depth in (8, 12, 32):
        layers = router.layers(depth)
        assert layers == sorted(set(layers)) and all(1 <= i < depth for i in layers), f"bad MoD layers {layers}"
    for r in (0, 1, 7, 64):
        assert all(0 <= router.capacity(i, r) <= r for i in router.layers(12)), "capacity outside [0, routable]"
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 10, 16, generator=g)  # (B, N, C)
    visual = torch.zeros(2, 10, dtype=torch.bool)
    visual[:, 2:7] = True
    routable = torch.zeros_like(visual)
    routable[:, :7] = True
    ctx = RouteContext(h, routable, torch.ones_like(visual), visual, router.layers(12)[0], 12)
    try:
        decision = router.route(ctx)
    except ConfigError:
        return
    assert tuple(decision.scores.shape) == (2, 10), "scores must have shape (B, N)"
    assert torch.isfinite(decision.scores).all(), "scores must be finite"
    assert decision.weight is None or tuple(decision.weight.shape) == (2, 10), "weight must be (B, N) or None"
    assert torch.equal(decision.scores, router.route(ctx).scores), "routing is not deterministic"


def check_strategy_components(strategy: Strategy) -> None:
    """Components are of the right roles, and each passes its own checks."""
    assert strategy.merger is None or isinstance(strategy.merger, BaseMerger)
    assert strategy.scorer is None or isinstance(strategy.scorer, BaseScorer)
    assert strategy.scheduler is None or isinstance(strategy.scheduler, BaseScheduler)
    assert strategy.router is None or isinstance(strategy.router, BaseRouter)
    for component in (*strategy.components.values(), strategy.router):
        if component is not None:
            check_component(component)


def check_budget_knob(strategy: Strategy) -> None:
    """The budget knob names a numeric option, and setting it through ``with_budget`` works."""
    knob = strategy.budget_knob
    if knob is None:
        assert strategy.merger is None and strategy.scorer is None, "a reducing strategy must declare a budget knob"
        return
    fields = type(strategy.config).model_fields
    assert knob in fields, f"budget knob '{knob}' is not an option of the strategy"
    assert strategy.budget_direction in (1, -1)
    value = getattr(strategy.config, knob)
    assert isinstance(value, (int, float)), f"budget knob '{knob}' must be numeric"
    assert getattr(strategy.with_budget(value).config, knob) == value


_COMMON: tuple[Check, ...] = (check_name, check_docstring, check_config, check_config_roundtrip)


def checks_for(component: BaseComponent) -> list[Check]:
    """The checks that apply to ``component``, in order."""
    checks: list[Check] = list(_COMMON)
    if not isinstance(component, ComposedStrategy):  # built from instances, it takes no options
        checks.append(check_rejects_unknown_option)
    if isinstance(component, BaseScheduler):
        checks.append(check_scheduler_budgets)
    if isinstance(component, BaseMerger):
        checks += [check_merger_output, check_merger_batch_independence]
    if isinstance(component, BaseScorer):
        checks.append(check_scorer_output)
    if isinstance(component, BaseRouter):
        checks.append(check_router_output)
    if isinstance(component, Strategy):
        checks += [check_strategy_components, check_budget_knob]
    return checks


def check_component(component: BaseComponent) -> None:
    """Run every applicable check; the first failure raises ``AssertionError`` naming the check."""
    for check in checks_for(component):
        try:
            check(component)
        except AssertionError as err:
            raise AssertionError(f"{component.name}: {check.__name__} failed: {err}") from err


def parametrize_with_checks(components: Iterable[BaseComponent]) -> Any:
    """A ``pytest.mark.parametrize`` over ``(component, check)`` pairs, with ids like ``fastv-check_config``."""
    import pytest

    pairs = list(_pairs(components))
    ids = [f"{c.kind}:{c.name}-{chk.__name__}" for c, chk in pairs]
    return pytest.mark.parametrize(("component", "check"), pairs, ids=ids)


def _pairs(components: Iterable[BaseComponent]) -> Iterator[tuple[BaseComponent, Check]]:
    for component in components:
        for check in checks_for(component):
            yield component, check
