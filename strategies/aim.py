"""AIM: similarity merging before the LLM and multi-modal-importance (PageRank) pruning inside it.

Zhong et al., "AIM: Adaptive Inference of Multi-Modal LLMs via Token Merging and Pruning", ICCV 2025,
arXiv:2412.03248. Implemented from the paper and the tokred dossier (algorithms.md §1), not from the reference code.

Where tokred differs from the reference code:

* pruning really drops tokens (``mode="drop"``, the default): later layers run on shorter sequences, their KV
  cache holds only what they kept, and each later PageRank runs over the survivors only. ``mode="mask"`` (with
  ``reference_code_offset=True``) is the reference loop: pruned tokens stay query rows of later attention and of the
  PageRank (uniform start over all N tokens), hidden only as keys, and the cache keeps everything;
* PageRank is computed from queries and keys, so any attention backend works, in one sweep over row chunks of the
  causal triangle that runs every power iteration on each chunk and never stores the matrix (bounded memory),
  instead of materialising an H x N x N tensor under eager attention;
* merge similarities and PageRank logits are float32 whatever the input dtype;
* batches of any size and any number of images work; spans come from ``input_ids``;
* for images the merge metric is the projected features by default; ``metric="keys"`` uses the vision tower's
  last-layer keys, as the LLaVA-1.5 variant does, but merges the *projected* features (after the projector, where
  tokred's pre-LLM stage acts) rather than CLIP features before the projector;
* the merge target is a keep ratio; a ratio that is one of AIM's round schedules (0.25: 196 -> 98 -> 49 per frame,
  0.4375: 576 -> 288 -> 252) runs the reference's rounds, any other ratio halves until a last partial round.

The paper has two variants, chosen with ``variant``: ``"image"`` (LLaVA-1.5 / Vicuna-7B: keep 0.4375, (l1, l2) =
(13, 21) of 32 layers) and ``"video"`` (LLaVA-OneVision / Qwen2-7B, per frame: keep 0.25, (14, 22) of 28 layers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from tokred.schedules.linear import LinearScheduler, default_l1_l2

from tokred._components import (
    BaseMerger,
    BaseScheduler,
    BaseScorer,
    ComponentConfig,
    MergeContext,
    MergeResult,
    ScoreContext,
    Strategy,
)
from tokred.errors import ConfigError
from tokred.hookspecs import hookimpl
from tokred.ops.attention import pagerank_importance
from tokred.ops.counts import exact_ratio, keep_count

Variant = Literal["auto", "image", "video"]

#: The paper's settings per input variant: merge keep ratio, (l1, l2) and the depth they were set for.
VARIANT_DEFAULTS: dict[str, tuple[float, tuple[int, int], int]] = {
    "image": (0.4375, (13, 21), 32),  # LLaVA-1.5-7B: 576 -> 288 -> 252, Vicuna-7B
    "video": (0.25, (14, 22), 28),  # LLaVA-OneVision-7B: 196 -> 98 -> 49 per frame, Qwen2-7B
}


def resolve_variant(variant: Variant) -> str:
    """The variant whose defaults apply to images: ``"auto"`` is ``"image"`` there; its components switch to the
    ``"video"`` defaults for a video input (``for_video``: the pre-LLM stage on video frames, the in-LLM stage on a
    prompt with video, both on images the caller marks as one clip's frames (``images_as_clip``), ``tokred flops``
    with several frames)."""
    return "image" if variant == "auto" else variant


def variant_l1_l2(variant: str, num_layers: int) -> tuple[int, int]:
    """A variant's (l1, l2) for a depth: the paper's at the variant's own depth, else scaled proportionally."""
    _, (l1, l2), depth = VARIANT_DEFAULTS[variant]
    if num_layers == depth:
        return l1, l2
    s1, s2 = max(1, round(l1 * exact_ratio(num_layers) / depth)), round(l2 * exact_ratio(num_layers) / depth)
    return s1, max(s1 + 1, s2)


def reference_rounds(keep_ratio: float) -> list[int] | None:
    """Exponents ``e_i`` of AIM's round schedule for a keep ratio, or ``None`` when it is not one of its schedules.

    AIM's rounds remove ``T // 2**e`` tokens each, ``T`` the original count: 0.25 is ``(1, 2)`` (196 -> 98 -> 49,
    the video default), 0.4375 is ``(1, 4)`` (576 -> 288 -> 252, the LLaVA-1.5 image default), 0.125 is
    ``(1, 2, 3)``. A ratio is such a schedule when ``1 - keep_ratio`` (read exactly as a decimal) has a finite binary
    expansion, ``sum(2**-e_i)``; its digits are the rounds, in increasing ``e``.
    """
    rest = 1 - exact_ratio(keep_ratio)
    den = rest.denominator
    if rest <= 0 or den & (den - 1) or den > 2**20:
        return None
    bits = den.bit_length() - 1  # den == 2**bits
    return [e for e in range(1, bits + 1) if (rest.numerator >> (bits - e)) & 1]


def merge_rounds(n: int, keep_ratio: float) -> list[int]:
    """Tokens removed by each AIM merge round of ``n`` tokens at ``keep_ratio``.

    When the ratio is one of AIM's schedules (`reference_rounds`) the rounds are the reference's,
    ``r_i = n // 2**e_i`` of the original count (0.25 of 169 keeps 43 = 169 - 84 - 42, not 42). Otherwise every
    round but the last removes half of what is left (the most one bipartite round can remove) and the last one
    reaches ``floor(keep_ratio * n)`` tokens (at least 1), in exact arithmetic.
    """
    exps = reference_rounds(keep_ratio)
    if exps is not None:
        rounds, left = [], n
        for e in exps:
            r = min(n // 2**e, left // 2)
            if r > 0:
                rounds.append(r)
                left -= r
        return rounds
    target = min(n, max(1, keep_count(n, keep_ratio, "floor")))
    rounds, left = [], n
    while left > target and left >= 2:
        r = min(left // 2, left - target)
        rounds.append(r)
        left -= r
    return rounds


class AimMerger(BaseMerger):
    """AIM's merge: iterative bipartite soft matching, unweighted mean including the destination, per frame.

    Each row of the input (an image, or a frame of a video) is merged on its own, never across rows.
    """

    name = "aim"
    paper = "AIM, arXiv:2412.03248"
    stage = "pre_llm"

    class Config(ComponentConfig):
        keep_ratio: float = Field(
            0.25,
            gt=0.0,
            le=1.0,
            description="Fraction of tokens per image/frame kept: AIM's rounds for its schedules (0.25, 0.4375, "
            "...), else floor(keep_ratio * N), exact.",
        )
        order: Literal["score", "original"] = Field(
            "score", description="Order of unmerged tokens: AIM's by-similarity order, or restored spatial order."
        )
        metric: Literal["features", "keys"] = Field(
            "features",
            description="Match on the projected features (AIM video) or the vision tower's last-layer keys "
            "(AIM image variant; the adapter captures them).",
        )
        video_keep_ratio: float | None = Field(
            None,
            gt=0.0,
            le=1.0,
            description="Keep ratio for the frames of a video input (merged on the features); None = keep_ratio.",
        )

    config: AimMerger.Config

    def for_video(self) -> AimMerger:
        """This merger with ``video_keep_ratio`` (and the feature metric) for video frames, when one is set."""
        c = self.config
        if c.video_keep_ratio is None:
            return self
        return AimMerger(keep_ratio=c.video_keep_ratio, order=c.order, metric="features")

    def output_count(self, n: int, grid: tuple[int, int] | None = None) -> int:
        return n - sum(merge_rounds(n, self.config.keep_ratio))

    def merge(self, x: torch.Tensor, ctx: MergeContext) -> MergeResult:
        from tokred.ops import aim_merge_frames

        rounds = merge_rounds(x.shape[1], self.config.keep_ratio)
        merged, source = aim_merge_frames(x, rounds, metric=ctx.metric, order=self.config.order)
        return MergeResult(x=merged, source=source)


class PageRankScorer(BaseScorer):
    """AIM's multi-modal importance: PageRank over the layer's sharpened attention, RMS over heads."""

    name = "aim"
    paper = "AIM, arXiv:2412.03248"
    query_rows = "all"

    class Config(ComponentConfig):
        temperature: float = Field(0.1, gt=0.0, le=100.0, description="Softmax temperature tau of the logits.")
        iterations: int = Field(5, ge=1, le=100, description="PageRank power iterations.")
        chunk_size: int = Field(64, ge=16, le=65536, description="Query rows per chunk (bounds peak memory).")

    config: PageRankScorer.Config

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        if ctx.query is None or ctx.key is None or ctx.scaling is None:
            raise ConfigError("scorer 'aim' needs all query rows and the keys of the scoring layer")
        return pagerank_importance(
            ctx.query,
            ctx.key,
            scaling=ctx.scaling,
            key_mask=ctx.attention_mask if ctx.key_mask is None else ctx.key_mask,
            query_mask=ctx.attention_mask,
            temperature=self.config.temperature,
            iterations=self.config.iterations,
            chunk_size=self.config.chunk_size,
        )


class _PruneOptions(ComponentConfig):
    variant: Variant = Field(
        "auto",
        description="Paper defaults to use: image (keep 0.4375, (13, 21) of 32 layers), video (keep 0.25 per frame, "
        "(14, 22) of 28 layers), auto = image for images, video for video frames (or images_as_clip).",
    )
    l1: int | None = Field(
        None, ge=1, description="Last 1-indexed layer keeping all visual tokens; None = the variant's, depth-scaled."
    )
    l2: int | None = Field(None, ge=2, description="First 1-indexed layer keeping none; None = the variant's.")
    depth_scale: float = Field(
        1.0, gt=0.0, le=4.0, description="Scales the default (l1, l2): larger prunes later (budget knob)."
    )
    reference_code_offset: bool = Field(False, description="Apply each budget one layer later, like the reference.")
    mode: Literal["drop", "mask"] = Field("drop", description="Really drop tokens, or mask them as keys (parity).")
    temperature: float = Field(0.1, gt=0.0, le=100.0, description="PageRank softmax temperature tau.")
    iterations: int = Field(5, ge=1, le=100, description="PageRank power iterations.")


class ScaledLinearScheduler(LinearScheduler):
    """AIM's linear schedule whose default (l1, l2) are scaled by ``depth_scale`` (the aim-prune budget knob)."""

    name = "aim-linear"

    class Config(LinearScheduler.Config):
        depth_scale: float = Field(1.0, gt=0.0, le=4.0, description="Factor on the default (l1, l2).")
        variant: Literal["image", "video"] | None = Field(
            None,
            description="Default (l1, l2) from a paper variant, scaled to the depth: image (13, 21) of 32 layers, "
            "video (14, 22) of 28; None = (14, 22) at 28 layers, (13, 21) at 32, else the 28-layer one scaled.",
        )
        auto_video: bool = Field(
            False, description="For a prompt with video, use the video variant's default (l1, l2) (variant='auto')."
        )

    config: ScaledLinearScheduler.Config

    def for_video(self) -> ScaledLinearScheduler:
        """This schedule with the video variant's default (l1, l2) when ``auto_video`` is set."""
        if not self.config.auto_video:
            return self
        return ScaledLinearScheduler(**{**self.config.model_dump(), "variant": "video", "auto_video": False})

    def resolved(self, num_layers: int) -> tuple[int, int]:
        v = self.config.variant
        d1, d2 = default_l1_l2(num_layers) if v is None else variant_l1_l2(v, num_layers)
        s = self.config.depth_scale
        l1 = self.config.l1 if self.config.l1 is not None else max(1, round(d1 * exact_ratio(s)))
        l2 = self.config.l2 if self.config.l2 is not None else max(l1 + 1, round(d2 * exact_ratio(s)))
        if l2 <= l1:
            raise ConfigError(f"scheduler 'aim-linear': need l1 < l2, got l1={l1}, l2={l2}")
        return l1, l2


def _prune_parts(cfg: _PruneOptions) -> tuple[BaseScorer, BaseScheduler]:
    scorer = PageRankScorer(temperature=cfg.temperature, iterations=cfg.iterations)
    schedule = ScaledLinearScheduler(
        l1=cfg.l1,
        l2=cfg.l2,
        depth_scale=cfg.depth_scale,
        reference_code_offset=cfg.reference_code_offset,
        variant=resolve_variant(cfg.variant),
        auto_video=cfg.variant == "auto",
    )
    return scorer, schedule


class _MergeOptions(ComponentConfig):
    variant: Variant = Field(
        "auto",
        description="Paper defaults to use: image (keep 0.4375: 576 -> 288 -> 252), video (keep 0.25 per frame: "
        "196 -> 98 -> 49), auto = image for images, video for video frames (or images_as_clip).",
    )
    keep_ratio: float = Field(
        0.4375,
        gt=0.0,
        le=1.0,
        description="Fraction of tokens per image/frame kept by merging (AIM's rounds for its schedules, else "
        "floor(keep_ratio * N), exact); when not given, the variant's (image 0.4375, "
        "video 0.25).",
    )
    order: Literal["score", "original"] = Field("score", description="Order of unmerged tokens after merging.")
    metric: Literal["features", "keys"] = Field(
        "features", description="Match on the projected features, or the vision tower's last-layer keys."
    )

    @model_validator(mode="before")
    @classmethod
    def _variant_keep_ratio(cls, data: Any) -> Any:
        """Fill ``keep_ratio`` from the variant when it is not given."""
        if isinstance(data, dict) and "keep_ratio" not in data and data.get("variant", "auto") != "auto":
            data = {**data, "keep_ratio": VARIANT_DEFAULTS[resolve_variant(data["variant"])][0]}
        return data  # auto: the image default stays unset (model_fields_set), so frames take the video one


def _merger(cfg: _MergeOptions) -> AimMerger:
    auto = cfg.variant == "auto" and "keep_ratio" not in cfg.model_fields_set
    video = VARIANT_DEFAULTS["video"][0] if auto else None
    return AimMerger(keep_ratio=cfg.keep_ratio, order=cfg.order, metric=cfg.metric, video_keep_ratio=video)


class AimMergeStrategy(Strategy):
    """AIM's merging alone: similarity-based bipartite merging of each image's tokens before the LLM.

    ``variant`` picks the paper's keep ratio: ``image`` 0.4375 (576 -> 288 -> 252, LLaVA-1.5), ``video`` 0.25 per
    frame (196 -> 98 -> 49, LLaVA-OneVision); ``auto`` is ``image`` for images and ``video`` for video frames (or
    images marked ``images_as_clip``).
    """

    name = "aim-merge"
    paper = "AIM, arXiv:2412.03248"
    budget_knob = "keep_ratio"
    Config = _MergeOptions

    def build(self) -> tuple[BaseMerger | None, BaseScorer | None, BaseScheduler | None]:
        return _merger(self.config), None, None  # type: ignore[arg-type]


class AimPruneStrategy(Strategy):
    """AIM's pruning alone: PageRank importance per layer, visual tokens kept on the linear l1 -> l2 schedule.

    ``variant`` picks the paper's default (l1, l2): ``image`` (13, 21) of 32 layers, ``video`` (14, 22) of 28, each
    scaled proportionally to other depths; ``auto`` is ``image``, or ``video`` for a prompt with video (or images
    marked ``images_as_clip``).
    """

    name = "aim-prune"
    paper = "AIM, arXiv:2412.03248"
    budget_knob = "depth_scale"
    Config = _PruneOptions

    def build(self) -> tuple[BaseMerger | None, BaseScorer | None, BaseScheduler | None]:
        scorer, schedule = _prune_parts(self.config)  # type: ignore[arg-type]
        return None, scorer, schedule


class AimStrategy(Strategy):
    """AIM: merge each image to ``keep_ratio`` before the LLM, then prune by PageRank on the l1 -> l2 schedule.

    The defaults follow the input variant of the paper (``variant``): ``image`` (LLaVA-1.5-7B) merges 576 -> 288 ->
    252 (keep 0.4375) and prunes on (13, 21) of 32 layers; ``video`` (LLaVA-OneVision-7B) merges each frame to 25 %
    (196 -> 98 -> 49) and prunes on (14, 22) of 28 layers. Other depths scale the variant's (l1, l2). ``auto``
    (default) picks by input: ``image`` for images, ``video`` for the frames of a video input (and for a prompt with
    video, its (l1, l2)). A model without a video input receives a clip as a sequence of images, which tokred cannot
    tell from several images: ``tokred.patch(..., images_as_clip=True)`` (or ``handle.images_as_clip``, per call)
    says they are one clip's frames, and ``video`` applies (``tokred compare`` sets it for video datasets). Explicit
    ``keep_ratio``/``l1``/``l2`` apply to both.
    """

    name = "aim"
    paper = "AIM, arXiv:2412.03248"
    budget_knob = "keep_ratio"

    class Config(_PruneOptions, _MergeOptions):
        variant: Variant = Field(
            "auto",
            description="Paper defaults to use: image (keep 0.4375, (13, 21) of 32 layers), video (keep 0.25 per "
            "frame, (14, 22) of 28 layers), auto = image for images, video for video frames (or images_as_clip).",
        )

    config: AimStrategy.Config

    def build(self) -> tuple[BaseMerger | None, BaseScorer | None, BaseScheduler | None]:
        scorer, schedule = _prune_parts(self.config)
        return _merger(self.config), scorer, schedule


@hookimpl
def tokred_register_mergers(register: Callable[[type[BaseMerger]], None]) -> None:
    register(AimMerger)


@hookimpl
def tokred_register_scorers(register: Callable[[type[BaseScorer]], None]) -> None:
    register(PageRankScorer)


@hookimpl
def tokred_register_schedulers(register: Callable[[type[BaseScheduler]], None]) -> None:
    register(ScaledLinearScheduler)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(AimMergeStrategy)
    register(AimPruneStrategy)
    register(AimStrategy)
