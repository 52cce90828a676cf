"""DART: keep pivot tokens and the visual tokens least duplicated by them, once, from decoder layer K on.

Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More",
arXiv:2502.11494 (the default pruner of TensorRT-Edge-LLM). Implemented from the paper's description, not from the
reference code.

Where tokred differs from the reference code: tokens are really dropped (layers >= K run on the kept set and their KV
cache holds only it), batches of any size work (each sample is selected on its own, with indices counted from the
sample's first real token so that left padding does not change the result), and the image span comes from
``input_ids`` instead of configured offsets.
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
    ScoreContext,
    Strategy,
)
from tokred.errors import ConfigError
from tokred.hookspecs import hookimpl
from tokred.ops.counts import keep_count
from tokred.ops.diversity import dart_embedding_keep, dart_keep, dart_quota, dart_visit_order
from tokred.ops.provenance import source_from_keep
from tokred.ops.selection import gather_tokens


def dart_count(n: int, keep_ratio: float, pivot_image_token: int, pivot_text_token: int) -> int:
    """Visual tokens DART keeps of ``n``: the image pivots plus ``quota`` per pivot, at most ``n``."""
    pivots = pivot_image_token + pivot_text_token
    return min(n, min(pivot_image_token, n) + pivots * dart_quota(n, keep_ratio, pivots))


class DartScheduler(BaseScheduler):
    """DART's budget: every visual token in layers ``0..K-1``, then the image pivots plus ``floor(keep_ratio * N /
    pivots)`` tokens per pivot (image and text pivots) from layer ``K`` on."""

    name = "dart"
    paper = "DART, arXiv:2502.11494"

    class Config(ComponentConfig):
        layer: int = Field(2, ge=1, description="K: first 0-indexed decoder layer that sees the reduced set (K >= 1).")
        keep_ratio: float = Field(0.25, ge=0.0, le=1.0, description="Fraction of visual tokens the pivots keep.")
        pivot_image_token: int = Field(4, ge=1, le=64, description="Image pivots (kept, each adds its quota).")
        pivot_text_token: int = Field(4, ge=0, le=64, description="Text pivots after the image (each adds its quota).")

    config: DartScheduler.Config

    def _budgets(self, num_layers: int, num_tokens: int) -> list[int]:
        c = self.config
        if c.layer >= num_layers:
            raise ConfigError(
                f"scheduler 'dart': layer={c.layer} but the stack has {num_layers} layers; choose 1..{num_layers - 1}"
            )
        kept = dart_count(num_tokens, c.keep_ratio, c.pivot_image_token, c.pivot_text_token)
        return [num_tokens] * c.layer + [kept] * (num_layers - c.layer)


class DartScorer(BaseScorer):
    """DART's selection as scores: 1 for the pivots' picks and the image pivots, 0 for the other visual tokens.

    Pivots: the ``pivot_image_token`` image tokens and ``pivot_text_token`` tokens after the image with the largest
    L1 norm of the scoring layer's post-RoPE keys (all heads). They are visited in the order the reference code
    iterates a copy of the Python ``set`` of their indices, computed explicitly by
    [`dart_visit_order`][tokred.ops.diversity.dart_visit_order] (the order decides which pivot claims a token first);
    each takes the ``floor(keep_ratio * N / pivots)`` remaining image tokens whose final-normed hidden states are least
    cosine-similar to its own. Text pivots are not kept (text is never dropped anyway).
    """

    name = "dart"
    paper = "DART, arXiv:2502.11494"
    query_rows = "last"  # only the keys are read; one query row is the cheapest capture

    class Config(ComponentConfig):
        keep_ratio: float = Field(0.25, ge=0.0, le=1.0, description="Fraction of visual tokens the pivots keep.")
        pivot_image_token: int = Field(4, ge=1, le=64, description="Image pivots (kept, each adds its quota).")
        pivot_text_token: int = Field(4, ge=0, le=64, description="Text pivots after the image (each adds its quota).")

    config: DartScorer.Config

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        if ctx.key is None or ctx.hidden_states is None:
            raise ConfigError("scorer 'dart' needs the post-RoPE keys and the output of the scoring layer")
        c = self.config
        key_l1 = ctx.key.float().abs().sum(dim=(1, 3))  # (B, N): L1 norm over every head and channel
        h = ctx.hidden_states
        features = h if ctx.final_norm is None else ctx.final_norm(h)  # (B, N, C)
        real = torch.ones_like(ctx.visual_mask) if ctx.attention_mask is None else ctx.attention_mask.bool()
        scores = torch.zeros(ctx.visual_mask.shape, dtype=torch.float32, device=h.device)  # (B, N)
        for b in range(h.shape[0]):
            visual = torch.nonzero(ctx.visual_mask[b] & real[b])[:, 0]  # (V,)
            if visual.numel() == 0:
                continue
            start = int(torch.nonzero(real[b])[0, 0])  # indices count from the first real token
            after = torch.nonzero(real[b] & (torch.arange(h.shape[1], device=h.device) > visual[-1]))[:, 0]
            n_img = min(c.pivot_image_token, int(visual.numel()))
            img = visual[torch.topk(key_l1[b, visual], n_img).indices]  # descending L1
            txt = after[torch.topk(key_l1[b, after], min(c.pivot_text_token, int(after.numel()))).indices]
            rel = [int(i) - start for i in [*img.tolist(), *txt.tolist()]]
            order = dart_visit_order(rel)  # the reference's list(set(...).copy()) order, computed explicitly
            pool = visual[~torch.isin(visual, img)]
            quota = dart_quota(int(visual.numel()), c.keep_ratio, c.pivot_image_token + c.pivot_text_token)
            keep = dart_keep(features[b], [i + start for i in order], pool, img.tolist(), quota)
            scores[b, keep] = 1.0
        return scores


class DartEmbeddingMerger(BaseMerger):
    """TensorRT-Edge-LLM's DART before the LLM: pivots and duplication on each image's LLM input embeddings.

    Each image keeps ``ceil(keep_ratio * n)`` (at least 1) of its ``n`` tokens: the ``pivot_image_token`` tokens with
    the largest L1 norm of their input embeddings (kept), then, visiting those and the ``pivot_text_token`` prompt
    text tokens with the largest L1 norm (in that order), each pivot takes an even share of the remaining budget among
    the image tokens least cosine-similar to it ([`dart_embedding_keep`][tokred.ops.diversity.dart_embedding_keep]).
    The text pivots are chosen among all non-visual, non-padding prompt tokens (``MergeContext.text_tokens``); called
    without them (outside the pipeline) only the image pivots take part.
    """

    name = "dart-embedding"
    paper = "DART, arXiv:2502.11494 (TensorRT-Edge-LLM variant)"
    stage = "pre_llm"
    uses_text = True

    class Config(ComponentConfig):
        keep_ratio: float = Field(
            0.25, ge=0.0, le=1.0, description="Share of each image's tokens kept, ceil(keep_ratio * n), at least 1."
        )
        pivot_image_token: int = Field(4, ge=1, le=64, description="Image pivots per image (kept).")
        pivot_text_token: int = Field(4, ge=0, le=64, description="Text pivots among all prompt text tokens.")

    config: DartEmbeddingMerger.Config

    def output_count(self, n: int, grid: tuple[int, int] | None = None) -> int:
        return min(n, max(1, keep_count(n, self.config.keep_ratio, "ceil")))

    def merge(self, x: torch.Tensor, ctx: MergeContext) -> MergeResult:
        b, n, _ = x.shape
        c, target = self.config, self.output_count(n)
        rows = []
        for i in range(b):
            text = x.new_zeros(0, x.shape[-1]) if ctx.text_tokens is None else ctx.text_tokens[i]  # (T, C)
            rows.append(dart_embedding_keep(x[i], text, target, c.pivot_image_token, c.pivot_text_token))
        keep = torch.stack(rows)  # (B, K)
        return MergeResult(x=gather_tokens(x, keep), source=source_from_keep(keep, n))


class DartStrategyConfig(DartScheduler.Config):
    """DART's options; ``layer=0`` selects TensorRT-Edge-LLM's variant on the input embeddings."""

    layer: int = Field(
        2,
        ge=0,
        description="K: first 0-indexed decoder layer that sees the reduced set; 0 = TensorRT-Edge-LLM's variant on "
        "the LLM input embeddings, before the LLM (ceil(keep_ratio * n) per image).",
    )


class DartStrategy(Strategy):
    """DART: from decoder layer K keep the image pivots and, for every image and text pivot, the visual tokens least
    similar to it (duplication-aware pruning, no attention weights); ``layer=0``: TensorRT-Edge-LLM's variant on the
    input embeddings."""

    name = "dart"
    paper = "DART, arXiv:2502.11494"
    budget_knob = "keep_ratio"

    Config = DartStrategyConfig  # the scheduler's budget options (the scorer gets the same), layer 0 allowed

    config: DartStrategyConfig

    def build(self) -> tuple[BaseMerger | None, BaseScorer | None, BaseScheduler | None]:
        c = self.config
        pivots = dict(pivot_image_token=c.pivot_image_token, pivot_text_token=c.pivot_text_token)
        if c.layer == 0:
            return DartEmbeddingMerger(keep_ratio=c.keep_ratio, **pivots), None, None
        return (
            None,
            DartScorer(keep_ratio=c.keep_ratio, **pivots),
            DartScheduler(layer=c.layer, keep_ratio=c.keep_ratio, **pivots),
        )


@hookimpl
def tokred_register_mergers(register: Callable[[type[BaseMerger]], None]) -> None:
    register(DartEmbeddingMerger)


@hookimpl
def tokred_register_scorers(register: Callable[[type[BaseScorer]], None]) -> None:
    register(DartScorer)


@hookimpl
def tokred_register_schedulers(register: Callable[[type[BaseScheduler]], None]) -> None:
    register(DartScheduler)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(DartStrategy)
