"""VidCom2 (Video Compression Commander): per-frame budgets from frame uniqueness, distinctive tokens within frames.

"Video Compression Commander: Plug-and-Play Inference Acceleration for Video Large Language Models", Liu, Wang, Ma and
Zhang, EMNLP 2025, arXiv:2505.14454 (the ``--video-retention-ratio`` of vLLM). Implemented from the paper's
description, not from the reference code.

Two stages, before the LLM, on the projected features of one clip of ``T`` frames of ``n`` tokens:

1. **Frame Compression Adjustment.** Frame feature ``f_t`` (mean of the frame's tokens), video feature ``g`` (mean of
   the ``f_t``), uniqueness ``u_t = -cos(f_t, g)``, ``sigma = softmax(u / temperature)`` over frames; frame ``t`` keeps
   ``r_t * n`` tokens with ``r_t = r * (1 + sigma_t - 1/T)``, so the clip keeps ``r * T * n`` in all.
2. **Adaptive Token Compression.** Within each frame, a token's similarity is ``cos(x, g) + cos(x, f_t)``; the frame
   keeps its budget of least similar (most distinctive) tokens, in their original order and positions.

Where tokred differs from the reference code:

* similarity is the paper's cosine on all channels; the authors' code (and vLLM, which follows it) uses a sum of
  Gaussian kernels (bandwidths 2^-3..2) on the half of the channels with the lowest variance, and rates a frame by
  the mean of its tokens' similarity to the video centre rather than by its mean feature;
* the clip keeps exactly ``max(1, floor(r * T * n))`` tokens: budgets are water-filled to at most ``n`` per frame and
  rounded by largest remainder (ties to the earlier frame); the reference rounds each frame on its own (at least one
  token, ``r_t`` clipped at 1), so its total drifts from ``r * T * n``;
* a frame may keep no token at all; ties between tokens go to the earlier one; budgets are float64, scores at least
  float32 whatever the model's dtype;
* every video family and a prompt of images taken as frames (the reference: LLaVA-OneVision/-Video, Qwen-VL), any
  batch of clips (the reference: batch 1); a lone image keeps ``floor(r * n)`` of its tokens by the same scores.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field

from tokred._components import (
    BaseMerger,
    ComponentConfig,
    MergeContext,
    MergeResult,
    Strategy,
)
from tokred.hookspecs import hookimpl
from tokred.ops.vidcom import vidcom2_keep, vidcom2_keep_count

_RATIO = "Retention ratio r (vLLM's --video-retention-ratio): a clip keeps max(1, floor(r * T * n)) tokens (exact)."
_TEMPERATURE = (
    "Softmax temperature over the frames' uniqueness: small values give the most unique frames more of the budget "
    "(the paper's 0.01); large values spread it evenly."
)


class VidCom2Merger(BaseMerger):
    """VidCom2's selection over a whole clip (frames as ``MergeContext.frames``): per-frame budgets from frame
    uniqueness, then each frame's most distinctive tokens.

    ``output_count(n, grid)`` is the clip's ``max(1, floor(r * n))`` whatever the frame count.
    """

    name = "vidcom2"
    paper = "VidCom2, arXiv:2505.14454"
    stage = "pre_llm"
    temporal = True

    class Config(ComponentConfig):
        retention_ratio: float = Field(0.25, gt=0.0, le=1.0, description=_RATIO)
        temperature: float = Field(0.01, gt=0.0, le=100.0, description=_TEMPERATURE)

    config: VidCom2Merger.Config

    @staticmethod
    def _frames(n: int, grid: tuple[int, int] | None) -> int:
        per = grid[0] * grid[1] if grid is not None else n
        return n // per if per and n % per == 0 else 1

    def output_count(self, n: int, grid: tuple[int, int] | None = None) -> int:
        return vidcom2_keep_count(n, self.config.retention_ratio)

    def merge(self, x: torch.Tensor, ctx: MergeContext) -> MergeResult:
        from tokred.ops import gather_tokens, source_from_keep

        t = ctx.frames if ctx.frames else self._frames(x.shape[1], ctx.grid)
        keep = vidcom2_keep(x, t, self.config.retention_ratio, self.config.temperature)  # (B, K)
        return MergeResult(x=gather_tokens(x, keep), source=source_from_keep(keep, x.shape[1]))


class VidCom2Strategy(Strategy):
    """VidCom2: before the LLM, give unique frames more of the clip's budget and keep each frame's most distinctive
    tokens, ``max(1, floor(retention_ratio * T * tokens_per_frame))`` per clip."""

    name = "vidcom2"
    paper = "VidCom2, arXiv:2505.14454"
    budget_knob = "retention_ratio"
    budget_direction = 1
    Config = VidCom2Merger.Config
    merger_class = VidCom2Merger


@hookimpl
def tokred_register_mergers(register: Callable[[type[BaseMerger]], None]) -> None:
    register(VidCom2Merger)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(VidCom2Strategy)
