"""CDPruner: keep the visual tokens that a conditional DPP (diversity x relevance to the prompt) selects.

Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in MLLMs",
arXiv:2506.10967; the variant shipped by OpenVINO GenAI. Implemented from the paper's description, not from the
reference code.

Where tokred differs from the paper: relevance is the cosine between each visual token and **one mean** of the LLM
input embeddings of the prompt's non-visual tokens (OpenVINO GenAI's signal; Hugging Face LLaVA has no CLIP text
tower), not CLIP text-image similarity; the kernel blends the paper's ``diag(r) S diag(r)`` with plain similarity by
``relevance_weight``; every image of a batch is reduced on its own; an image always keeps at least one token.
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
from tokred.errors import ConfigError
from tokred.hookspecs import hookimpl
from tokred.ops.counts import keep_count
from tokred.ops.diversity import cdpruner_kernel, dpp_greedy_keep, relevance_scores
from tokred.ops.provenance import source_from_keep
from tokred.ops.selection import gather_tokens, protected_count


class CDPrunerMerger(BaseMerger):
    """Keeps the ``round(keep_ratio * N)`` tokens of each image picked by greedy DPP MAP inference on a kernel of
    feature similarity conditioned on relevance to the prompt, in their original order.

    ``S`` is the cosine similarity of the projected features, ``r`` the min-max-normalised cosine of each token to
    the prompt's mean text embedding (``MergeContext.text_embedding``, which the pre-LLM stage supplies), and the
    kernel ``(1 - w) * S + w * (r_i * S_ij * r_j)``. Without a text embedding the relevance is uniform (kernel
    ``S``). Protected tokens (``MergeContext.protected``) are kept and never candidates.
    """

    name = "cdpruner"
    paper = "CDPruner, arXiv:2506.10967"
    stage = "pre_llm"
    uses_text = True

    class Config(ComponentConfig):
        keep_ratio: float = Field(
            0.222,
            gt=0.0,
            le=1.0,
            description="Fraction of each image's tokens kept, rounded to the nearest count (0.222: 128 of 576).",
        )
        relevance_weight: float = Field(
            0.5,
            ge=0.0,
            le=1.0,
            description="w in (1 - w) * S + w * (r_i * S_ij * r_j): 1 is the paper's kernel, 0 pure diversity.",
        )

    config: CDPrunerMerger.Config

    def output_count(self, n: int, grid: tuple[int, int] | None = None) -> int:
        return min(n, max(1, keep_count(n, self.config.keep_ratio, "round")))

    def merge(self, x: torch.Tensor, ctx: MergeContext) -> MergeResult:
        b, n, c = x.shape
        text = ctx.text_embedding
        if text is not None and tuple(text.shape) != (b, c):
            raise ConfigError(
                f"merger 'cdpruner': the text embedding has shape {tuple(text.shape)}, but the visual features "
                f"{tuple(x.shape)} need one ({b}, {c}) vector per image (the projector must output the LLM's "
                "embedding width)"
            )
        relevance = None if text is None else relevance_scores(x, text, protected=ctx.protected)  # (B, N)
        kernel = cdpruner_kernel(x, relevance, self.config.relevance_weight)  # (B, N, N)
        p = protected_count(ctx.protected, b, n)
        keep = dpp_greedy_keep(kernel, max(0, self.output_count(n) - p), protected=ctx.protected)  # (B, K)
        return MergeResult(x=gather_tokens(x, keep), source=source_from_keep(keep, n))


class CDPrunerStrategy(Strategy):
    """CDPruner: before the LLM keep the ``keep_ratio`` share of each image's tokens that a conditional DPP picks
    (diverse projected features, weighted by relevance to the prompt's mean text embedding)."""

    name = "cdpruner"
    paper = "CDPruner, arXiv:2506.10967"
    budget_knob = "keep_ratio"
    Config = CDPrunerMerger.Config
    merger_class = CDPrunerMerger


@hookimpl
def tokred_register_mergers(register: Callable[[type[BaseMerger]], None]) -> None:
    register(CDPrunerMerger)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(CDPrunerStrategy)
