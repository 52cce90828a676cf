"""gamma-MoD: Mixture-of-Depths adaptation of an MLLM; image and instruction tokens skip the low-rank layers.

Luo et al., "gamma-MoD: Exploring Mixture-of-Depth Adaptation for Multimodal Large Language Models",
arXiv:2410.13859. Implemented from the paper and the tokred dossier (field-2026-12.md, gamma-MoD), not from the
reference code.

The layers whose attention maps have a low rank (ARank; `tokred analyze arank`) become Mixture-of-Depths (MoD)
layers: by default every layer but the first three and the last, the set the paper's ARank analysis picks for
LLaVA. One router ``Linear(hidden, 2)``, shared by all MoD layers, reads each layer's input; at every MoD layer the
routable tokens (image tokens and the instruction text up to the last image token) with the highest "process"
probability, ``capacity`` of them, run the layer, the others skip it (hidden state unchanged, absent from the
layer's keys, values and cache). The question after the image is never routable (masked routing), and the MLP
output of every processed routable token is multiplied by its process probability. The router is trained
(`python -m tokred.eval.train_router`) with the LM loss plus 0.01 x the router's cross-entropy against the top-k
labels; its weights are a file the ``router`` option names.

Where tokred differs from the reference code: only the router is trained (the LLM is frozen; the paper fine-tunes
the whole model with the router), capacity is a fixed share of each prompt's routable tokens at every MoD layer
(the reference's inference keeps tokens with a process probability above a threshold), decode steps run every
layer for the generated token (never routable) instead of skipping a layer when p < 0.5, skipped tokens are real
skips with per-layer KV caches and original positions (any batch size, left padding evened out with padding rows),
and the ARank choice of layers is a rule (``skip_first``/``skip_last``) checked with `tokred analyze arank` rather
than recomputed per model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field

from tokred._components import (
    BaseMerger,
    BaseRouter,
    BaseScheduler,
    BaseScorer,
    ComponentConfig,
    RouteContext,
    RouteDecision,
    Strategy,
)
from tokred.errors import ConfigError
from tokred.hookspecs import hookimpl

PAPER = "gamma-MoD, arXiv:2410.13859"
#: The router trained on the reference model (`python -m tokred.eval.train_router`).
REFERENCE_ROUTER = Path(__file__).resolve().parents[1] / "tokred" / "eval" / "weights" / "gamma_mod_router.safetensors"


class GammaModRouter(BaseRouter):
    """gamma-MoD's shared router: ``softmax(Linear(hidden, 2))`` per token; the "process" probability ranks the
    routable tokens of each MoD layer and scales their MLP output."""

    name = "gamma-mod"
    paper = PAPER
    weighted: ClassVar[bool] = True

    class Config(ComponentConfig):
        capacity: float = Field(
            0.5, gt=0.0, le=1.0, description="Share of each prompt's routable tokens a MoD layer processes."
        )
        skip_first: int = Field(3, ge=1, le=64, description="Leading decoder layers that are never MoD layers.")
        skip_last: int = Field(1, ge=0, le=64, description="Trailing decoder layers that are never MoD layers.")

    config: Config

    def __init__(self, config: ComponentConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.linear: torch.nn.Linear | None = None  # set by load() or by the training code
        self.record: list[tuple[int, torch.Tensor]] | None = None  # (layer, logits (B, N, 2)) while training

    def layers(self, num_layers: int) -> list[int]:
        c = self.config
        layers = list(range(c.skip_first, num_layers - c.skip_last))
        if not layers:
            raise ConfigError(
                f"router 'gamma-mod': skip_first={c.skip_first} and skip_last={c.skip_last} leave no MoD layer in a "
                f"{num_layers}-layer decoder; lower them"
            )
        return layers

    def capacity(self, layer: int, routable: int) -> int:
        return min(routable, math.ceil(self.config.capacity * routable))

    def route(self, ctx: RouteContext) -> RouteDecision:
        if self.linear is None:
            raise ConfigError(
                "router 'gamma-mod' has no weights: give the strategy router=PATH (a file from "
                "`python -m tokred.eval.train_router`)"
            )
        h = ctx.hidden_states  # (B, N, C)
        if self.linear.weight.device != h.device:
            self.linear.to(h.device)
        logits = self.linear(h.to(self.linear.weight.dtype))  # (B, N, 2)
        if self.record is not None:
            self.record.append((ctx.layer, logits))
        p = logits.softmax(dim=-1)[..., 1]  # (B, N) probability of "process"
        return RouteDecision(scores=p, weight=p)

    def load(self, path: str | Path, hidden_size: int) -> dict[str, str]:
        """Load ``weight`` (2, C) and ``bias`` (2,) from a safetensors file; returns its metadata."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"strategy 'gamma-mod': router file {str(path)!r} does not exist")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        weight = state.get("weight")
        if weight is None or tuple(weight.shape) != (2, hidden_size) or "bias" not in state:
            got = None if weight is None else tuple(weight.shape)
            raise ConfigError(
                f"strategy 'gamma-mod': {path} holds a router weight of shape {got}, but this model's hidden size "
                f"needs (2, {hidden_size}) and a bias; train a router for this model (python -m "
                "tokred.eval.train_router --help)"
            )
        self.linear = torch.nn.Linear(hidden_size, 2)
        with torch.no_grad():
            self.linear.weight.copy_(weight.float())
            self.linear.bias.copy_(state["bias"].float())
        self.linear.requires_grad_(False)
        return meta


class GammaModStrategy(Strategy):
    """gamma-MoD: image and instruction tokens skip the low-rank (MoD) layers by a trained shared router; the
    question always runs every layer.

    Needs trained router weights (``router=PATH``); the committed ones are for the reference model
    (`tokred/eval/weights/gamma_mod_router.safetensors`).
    """

    name = "gamma-mod"
    paper = PAPER
    budget_knob = "capacity"

    class Config(ComponentConfig):
        router: str | None = Field(
            None,
            description="Router weights (safetensors from `python -m tokred.eval.train_router`); required to run.",
        )
        capacity: float = Field(
            0.5, gt=0.0, le=1.0, description="Share of each prompt's routable tokens a MoD layer processes."
        )
        skip_first: int = Field(3, ge=1, le=64, description="Leading decoder layers that are never MoD layers.")
        skip_last: int = Field(1, ge=0, le=64, description="Trailing decoder layers that are never MoD layers.")

    config: Config

    def build(self) -> tuple[BaseMerger | None, BaseScorer | None, BaseScheduler | None]:
        c = self.config
        self.router = GammaModRouter(capacity=c.capacity, skip_first=c.skip_first, skip_last=c.skip_last)
        return None, None, None

    def prepare(self, model: Any) -> None:
        """Load the router weights for ``model`` (its hidden size), or refuse without a file."""
        if self.config.router is None:
            raise ConfigError(
                "strategy 'gamma-mod' needs trained router weights: gamma-mod@router=PATH (for the reference model: "
                f"{REFERENCE_ROUTER}; for another model train one with python -m tokred.eval.train_router)"
            )
        cfg = getattr(model.config, "text_config", None) or model.config
        assert isinstance(self.router, GammaModRouter)
        self.router.load(self.config.router, int(cfg.hidden_size))


@hookimpl
def tokred_register_routers(register: Callable[[type[BaseRouter]], None]) -> None:
    register(GammaModRouter)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(GammaModStrategy)
