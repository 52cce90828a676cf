"""EVS (Efficient Video Sampling): prune the video tokens that did not change since the previous frame.

"Efficient Video Sampling: Pruning Temporally Redundant Tokens for Faster VLM Inference", arXiv:2510.14624 (NVIDIA;
the ``--video-pruning-rate`` of vLLM, also in SGLang and TensorRT-LLM). Implemented from the paper's description and
the dossier (field-2026-12.md), not from the reference code.

Each token of a clip is scored by its dissimilarity ``1 - cos`` to the token at the same spatial position in the
previous frame; frame 0 is always kept. With pruning rate ``q`` the clip keeps
``max(tokens_per_frame, floor(T * tokens_per_frame * (1 - q)))`` tokens, the most changed ones, in their original
order, before the LLM; every survivor keeps its original (M-RoPE) position.

Where tokred differs from the reference code:

* it runs on every family whose video enters the LLM as frames of a token grid (LLaVA-OneVision, LLaVA-NeXT-Video,
  Qwen2/2.5/3-VL), and on a prompt of images taken as the frames of one clip (the reference model), not only on the
  engines' supported models; Qwen3-VL's per-frame timestamp text is kept and never counted (a vLLM issue, #30847,
  miscounts tokens after timestamps);
* the score uses the projected features the LLM receives, in float32 whatever the model's dtype;
* ties (equal dissimilarity, e.g. an exactly static background) are broken towards the earlier token, so the selection
  is deterministic;
* LLaVA-OneVision's newline row after the frames is structural: never scored, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field

from tokred._components import (
    BaseMerger,
    BaseScheduler,
    BaseScorer,
    ComponentConfig,
    MergeContext,
    MergeResult,
    Strategy,
)
from tokred.hookspecs import hookimpl
from tokred.ops.temporal import evs_keep, evs_keep_count


class EvsMerger(BaseMerger):
    """EVS's temporal selection over a whole clip (frames as ``MergeContext.frames``); a lone image is kept whole.

    ``output_count(n, grid)`` reads the frame count as ``n`` over the frame's grid size (the pre-LLM stage passes one
    frame's grid with a clip).
    """

    name = "evs"
    paper = "EVS, arXiv:2510.14624"
    stage = "pre_llm"
    temporal = True

    class Config(ComponentConfig):
        rate: float = Field(
            0.75,
            ge=0.0,
            lt=1.0,
            description="Pruning rate q: a clip keeps max(tokens_per_frame, floor(T * tokens_per_frame * (1 - q))) "
            "tokens (exact).",
        )

    config: EvsMerger.Config

    @staticmethod
    def _frames(n: int, grid: tuple[int, int] | None) -> int:
        per = grid[0] * grid[1] if grid is not None else n
        return n // per if per and n % per == 0 else 1

    def output_count(self, n: int, grid: tuple[int, int] | None = None) -> int:
        t = self._frames(n, grid)
        return evs_keep_count(t, n // t, self.config.rate)

    def merge(self, x: torch.Tensor, ctx: MergeContext) -> MergeResult:
        from tokred.ops import gather_tokens, source_from_keep

        t = ctx.frames if ctx.frames else self._frames(x.shape[1], ctx.grid)
        keep = evs_keep(x, t, self.config.rate)  # (B, K)
        return MergeResult(x=gather_tokens(x, keep), source=source_from_keep(keep, x.shape[1]))


class EvsStrategy(Strategy):
    """EVS: before the LLM, keep the video tokens most changed from the same position in the previous frame (frame 0
    always), ``max(tokens_per_frame, floor(T * tokens_per_frame * (1 - rate)))`` per clip."""

    name = "evs"
    paper = "EVS, arXiv:2510.14624"
    budget_knob = "rate"
    budget_direction = -1

    class Config(ComponentConfig):
        rate: float = Field(
            0.75,
            ge=0.0,
            lt=1.0,
            description="Pruning rate q (vLLM's --video-pruning-rate): a clip keeps max(tokens_per_frame, "
            "floor(T * tokens_per_frame * (1 - q))) tokens.",
        )

    config: EvsStrategy.Config

    def build(self) -> tuple[BaseMerger | None, BaseScorer | None, BaseScheduler | None]:
        return EvsMerger(rate=self.config.rate), None, None


@hookimpl
def tokred_register_mergers(register: Callable[[type[BaseMerger]], None]) -> None:
    register(EvsMerger)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(EvsStrategy)
