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

from tokred._components import BaseMerger, BaseScheduler, BaseScorer, ComponentConfig, ScoreContext, Strategy
from tokred.errors import ConfigError
from tokred.hookspecs import hookimpl
from tokred.ops.diversity import dart_keep, dart_quota, dart_visit_order


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


class DartStrategy(Strategy):
    """DART: from decoder layer K keep the image pivots and, for every image and text pivot, the visual tokens least
    similar to it (duplication-aware pruning, no attention weights)."""

    name = "dart"
    paper = "DART, arXiv:2502.11494"
    budget_knob = "keep_ratio"

    Config = DartScheduler.Config  # the scheduler's budget options are the strategy's (the scorer gets the same)

    config: DartScheduler.Config

    def build(self) -> tuple[BaseMerger | None, BaseScorer | None, BaseScheduler | None]:
        c = self.config
        pivots = dict(pivot_image_token=c.pivot_image_token, pivot_text_token=c.pivot_text_token)
        return (
            None,
            DartScorer(keep_ratio=c.keep_ratio, **pivots),
            DartScheduler(layer=c.layer, keep_ratio=c.keep_ratio, **pivots),
        )


@hookimpl
def tokred_register_scorers(register: Callable[[type[BaseScorer]], None]) -> None:
    register(DartScorer)


@hookimpl
def tokred_register_schedulers(register: Callable[[type[BaseScheduler]], None]) -> None:
    register(DartScheduler)


@hookimpl
def tokred_register_strategies(register: Callable[[type[Strategy]], None]) -> None:
    register(DartStrategy)
