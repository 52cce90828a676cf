"""Per-patch run state shared by the hooks: the visual mask of the current prompt, budgets, kept indices, stats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tokred._components import ScoreContext, Strategy
from tokred.errors import ConfigError, UnsupportedModeError


@dataclass
class ReductionStats:
    """What the last prefill of a patched model did.

    Attributes:
        tokens_per_layer: Sequence length each decoder layer processed (padding included), one entry per layer.
        kept_indices: For every decoder layer where the kept set changed: the original token indices (in the
            sequence the decoder received) that the layer and all later ones keep, LongTensor (B, kept), ascending.
        visual_tokens_in: Visual placeholder tokens in the input, summed over the batch (before any reduction).
        visual_tokens_out: Visual tokens the last decoder layer processed, summed over the batch.
        visual_tokens_per_layer: Visual tokens each decoder layer processed, summed over the batch.
        visual_provenance: When a pre-LLM stage ran: for every image, ``(sample, positions)`` where ``positions``
            (LongTensor (n,)) gives, for each of the image's original visual tokens, the position in the sequence the
            decoder received of the token it was merged into (-1 if it was dropped before the LLM).
        routed_indices: For every Mixture-of-Depths layer of a routing strategy (gamma-MoD): the original token
            indices that layer processed, LongTensor (B, K), ascending; the other tokens skipped it.
    """

    tokens_per_layer: list[int] = field(default_factory=list)
    kept_indices: dict[int, torch.Tensor] = field(default_factory=dict)
    visual_tokens_in: int = 0
    visual_tokens_out: int = 0
    visual_tokens_per_layer: list[int] = field(default_factory=list)
    visual_provenance: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    routed_indices: dict[int, torch.Tensor] = field(default_factory=dict)


def check_route_layers(router: Any, num_layers: int) -> list[int]:
    """The router's MoD layers for this depth, or one clear error when one is out of ``[1, num_layers)``."""
    layers = [int(i) for i in router.layers(num_layers)]
    bad = [i for i in layers if not 1 <= i < num_layers]
    if bad or len(set(layers)) != len(layers):
        raise ConfigError(
            f"router '{router.name}' routes decoder layers {layers} of a {num_layers}-layer decoder; MoD layers must "
            f"be distinct and in [1, {num_layers}) (layer 0 is never routed: its cache anchors positions and masks)"
        )
    return sorted(layers)


@dataclass
class Captured:
    """Query rows and keys captured by the attention function at a scoring layer (post-RoPE)."""

    query: torch.Tensor  # (B, H, Q, D)
    key: torch.Tensor  # (B, H_kv, N, D)
    query_index: torch.Tensor  # (B, Q) positions in the layer's (current) sequence
    scaling: float


class RunState:
    """Mutable state of one patched model across prefill and decode steps.

    Args:
        strategy: The strategy being applied.
        num_layers: Decoder depth.
    """

    def __init__(self, strategy: Strategy, num_layers: int) -> None:
        self.strategy = strategy
        self.num_layers = num_layers
        self.mode = strategy.prune_mode
        self.positions = strategy.position_policy
        self.probing: int | None = None  # layer whose projection-only pass is running (own-layer scorers)
        self.stats = ReductionStats()
        self.phase = "idle"
        # set by the base-model hook for the next prefill
        self.pending_visual: torch.Tensor | None = None  # (B, N) bool
        self.pending_pad: torch.Tensor | None = None  # (B, N) bool
        self.pending_visual_in = 0
        self.pending_video = False  # the next prefill's prompt has video input (set by the pre-LLM stage)
        self.images_as_clip = False  # the caller says a prompt's images are the frames of one clip (the handle's)
        self.video = False
        self.pending_provenance: list[tuple[int, torch.Tensor]] = []
        self.prepared_provenance: list[tuple[int, torch.Tensor]] = []
        self.provenance: list[tuple[int, torch.Tensor]] = []
        self.prepared_ids: torch.Tensor | None = None  # shortened ids prepared by the generate wrapper
        self.prepared_visual: torch.Tensor | None = None
        self.prepared_visual_in = 0
        self.final_norm: Any = None  # the decoder's final norm, for scorers that read it (set by the in-LLM stage)
        self._reset_prefill(0, 0)

    # --------------------------------------------------------------------------------------- prefill

    def _reset_prefill(self, batch: int, n: int) -> None:
        self.prompt_len = n
        self.decode_kv = n
        self.budgets: list[int] = []
        self.prune_layers: set[int] = set()
        self.capture_layers: set[int] = set()
        self.probe_layers: set[int] = set()  # pruning layers scored by their own projections (before they run)
        self.captured: dict[int, Captured] = {}
        self.keep: torch.Tensor | None = None  # (B, K) original indices kept so far (drop mode)
        self.allowed: torch.Tensor | None = None  # (B, N) bool tokens still visible as keys (mask mode)
        self.layer_keep: list[torch.Tensor | None] = [None] * self.num_layers
        self.layer_allowed: list[torch.Tensor | None] = [None] * self.num_layers
        self.cur_visual = torch.zeros(batch, n, dtype=torch.bool)
        self.cur_pad = torch.ones(batch, n, dtype=torch.bool)
        self.tokens_per_layer: list[int] = []
        self.visual_per_layer: list[int] = []
        self.kept_indices: dict[int, torch.Tensor] = {}
        self.route_layers: set[int] = set()  # Mixture-of-Depths layers of a routing strategy
        self.routable: torch.Tensor | None = None  # (B, N) bool tokens a router may let skip a layer
        self.routed: dict[int, torch.Tensor] = {}  # MoD layer -> (B, K) original indices it processed
        self.route_now: int | None = None  # the MoD layer in flight
        self.route_full: torch.Tensor | None = None  # (B, N, C) its full-length input
        self.route_weight: torch.Tensor | None = None  # (B, K) factor on its MLP output, None: 1

    def begin_prefill(self, batch: int, n: int, device: torch.device) -> None:
        """Start a prefill of ``n`` tokens: take the pending visual mask and compute the layer budgets."""
        self._reset_prefill(batch, n)
        self.phase = "prefill"
        visual, pad = self.pending_visual, self.pending_pad
        self.pending_visual = self.pending_pad = None
        if visual is not None and tuple(visual.shape) == (batch, n):
            self.cur_visual = visual.to(device)
        else:
            self.cur_visual = torch.zeros(batch, n, dtype=torch.bool, device=device)
        self.cur_pad = (
            pad.to(device).bool()
            if pad is not None and tuple(pad.shape) == (batch, n)
            else (torch.ones(batch, n, dtype=torch.bool, device=device))
        )
        self.stats.visual_tokens_in = self.pending_visual_in or int(self.cur_visual.sum())
        self.pending_visual_in = 0
        self.video, self.pending_video = self.pending_video, False
        self.provenance, self.pending_provenance = self.pending_provenance, []
        self._plan()

    def _plan(self) -> None:
        """Budgets per layer, pruning layers and scoring layers for the current prompt."""
        self._plan_routes()
        scheduler = self.strategy.scheduler
        if scheduler is None:
            return
        if self.video:  # a prompt with video input: the scheduler's video variant (AIM variant="auto")
            scheduler = scheduler.for_video()
        counts = sorted(set(self.cur_visual.sum(dim=1).tolist()))
        plans = {v: scheduler.budgets(self.num_layers, int(v)) for v in counts}
        for v, b in plans.items():
            if b[0] != v:
                raise ConfigError(
                    f"strategy '{self.strategy.name}' asks layer 0 to process {b[0]} of {v} visual tokens, but layer 0 "
                    "is never pruned inside the LLM (its cache length anchors positions and masks); reduce before the "
                    "LLM instead (a pre-LLM merger) or start pruning at layer >= 1"
                )
        if len(counts) > 1 and any(len(set(b)) > 1 for b in plans.values()):
            raise UnsupportedModeError(
                f"the samples of this batch have different visual token counts ({counts}); in-LLM pruning needs the "
                "same count in every sample (equal kept counts keep the batch rectangular). Run these samples in "
                "separate batches, or group samples with equal image sizes"
            )
        self.budgets = plans[counts[0]]
        self.prune_layers = {i for i in range(1, self.num_layers) if self.budgets[i] < self.budgets[i - 1]}
        if getattr(scheduler, "adaptive", False):  # the scorer sizes every layer >= 1 (BaseScheduler.adaptive)
            self.prune_layers = set(range(1, self.num_layers))
        scorer = self.strategy.scorer
        if scorer is not None and scorer.query_rows != "none":
            scored = {i for i in self.prune_layers if self.budgets[i] > 0}
            if scorer.scores_own_layer:
                self.probe_layers = scored
            else:
                self.capture_layers = {i - 1 for i in scored}

    def _plan_routes(self) -> None:
        """MoD layers and routable tokens of the current prompt (routing strategies)."""
        router = self.strategy.router
        if router is None or not bool(self.cur_visual.any()):
            return
        from tokred.ops.routing import routable_mask

        self.route_layers = set(check_route_layers(router, self.num_layers))
        self.routable = routable_mask(self.cur_visual, self.cur_pad)  # (B, N)

    @property
    def pruning(self) -> bool:
        """Whether the current prompt is pruned (or routed) inside the LLM."""
        return bool(self.prune_layers) or bool(self.route_layers)

    def record_route(self, layer: int, keep: torch.Tensor) -> None:
        """Remember what a MoD layer processed (prefill): the decode steps gather its mask columns with ``keep``."""
        self.routed[layer] = keep
        self.layer_keep[layer] = keep
        self.tokens_per_layer.append(int(keep.shape[1]))
        self.visual_per_layer.append(int(self.cur_visual.gather(1, keep).sum()))

    def capture(self, layer: int, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        """Keep the query rows the scorer asked for, and the keys, of a scoring layer (prefill only)."""
        scorer = self.strategy.scorer
        rows = scorer.query_rows if scorer is not None else "none"
        b, _, n, _ = query.shape
        if rows == "last":
            index = torch.full((b, 1), n - 1, dtype=torch.long, device=query.device)  # (B, 1)
            q = query[:, :, -1:]  # (B, H, 1, D)
        elif rows == "text":
            text = ~self.cur_visual  # (B, N)
            count = int(text[0].sum())
            index = text.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :count].sort(dim=1).values
            q = query.gather(2, index[:, None, :, None].expand(-1, query.shape[1], -1, query.shape[3]))
        else:
            index = torch.arange(n, device=query.device).expand(b, n)  # (B, N)
            q = query
        self.captured[layer] = Captured(q.detach(), key.detach(), index, float(scaling))

    def score_context(self, layer: int, hidden: torch.Tensor) -> ScoreContext:
        """What the scorer of pruning layer ``layer`` sees: layer ``layer - 1``'s inputs (or, for an own-layer
        scorer, layer ``layer``'s projections of its input).

        In mask mode every real token is still a query row of that layer (``attention_mask``), while the tokens
        pruned so far are hidden as keys (``key_mask``), exactly as in AIM's reference prefill.
        """
        scorer = self.strategy.scorer
        source = layer if scorer is not None and scorer.scores_own_layer else layer - 1
        cap = self.captured.pop(source, None)
        key_mask = None if self.allowed is None else self.cur_pad & self.allowed
        return ScoreContext(
            visual_mask=self.cur_visual,
            attention_mask=self.cur_pad,
            key_mask=key_mask,
            hidden_states=hidden,
            query=None if cap is None else cap.query,
            key=None if cap is None else cap.key,
            query_index=None if cap is None else cap.query_index,
            scaling=None if cap is None else cap.scaling,
            layer=source,
            num_layers=self.num_layers,
            final_norm=self.final_norm,
        )

    def record_layer(self, layer: int, length: int) -> None:
        """Remember what a layer processed (prefill)."""
        self.layer_keep[layer] = self.keep
        self.layer_allowed[layer] = self.allowed
        self.tokens_per_layer.append(length)
        visual = self.cur_visual if self.allowed is None else self.cur_visual & self.allowed
        self.visual_per_layer.append(int(visual.sum()))

    def end_prefill(self) -> None:
        """Publish the prefill's statistics."""
        self.stats = ReductionStats(
            tokens_per_layer=list(self.tokens_per_layer),
            kept_indices=dict(self.kept_indices),
            visual_tokens_in=self.stats.visual_tokens_in,
            visual_tokens_out=self.visual_per_layer[-1] if self.visual_per_layer else 0,
            visual_tokens_per_layer=list(self.visual_per_layer),
            visual_provenance=list(self.provenance),
            routed_indices=dict(self.routed),
        )
        self.phase = "decode"

    def info(self) -> dict[str, Any]:
        """Small summary for debugging."""
        return {"phase": self.phase, "budgets": self.budgets, "prune_layers": sorted(self.prune_layers)}
