"""Pure, batched tensor operations for visual-token reduction (torch only, no model code).

Example:
    >>> import torch
    >>> from tokred import ops
    >>> x = torch.randn(2, 16, 8)  # (B, N, C)
    >>> plan = ops.bipartite_soft_matching(x, r=4)  # ToMe/AIM matching, computed once
    >>> plan.merge_mean(x).shape  # ... applied to any tensor with the same token axis
    torch.Size([2, 12, 8])
    >>> keep = ops.topk_keep(x.norm(dim=-1), k=5)  # (B, 5) kept indices, ascending
    >>> ops.gather_tokens(x, keep).shape
    torch.Size([2, 5, 8])
    >>> pooled, source = ops.avg_pool_grid(x, (4, 4), kernel=2)  # 4x4 grid -> 2x2
    >>> ops.group_sizes(source, pooled.shape[1])
    tensor([[4, 4, 4, 4],
            [4, 4, 4, 4]])

Every reduction reports provenance as a ``source`` tensor of shape (B, N_in): the output index each input went
into, or -1 for a dropped input (see `tokred.ops.provenance`).

Modules:
    counts: exact "how many of n a ratio keeps" (`keep_count`) with a stated rounding rule.
    provenance: compact "which inputs made each output" bookkeeping.
    matching: ToMe bipartite soft matching as a `MergePlan`; AIM per-frame merging; proportional attention.
    selection: top-k and seeded random selection with protected tokens; gathering.
    pooling: 2-D average pooling of a token grid.
    diversity: max-min diversity (DivPrune) and greedy DPP MAP selection (CDPruner), cosine kernels, relevance.
"""

from __future__ import annotations

from tokred.ops.counts import Rounding, exact_ratio, keep_count
from tokred.ops.diversity import (
    cdpruner_kernel,
    cosine_similarity_matrix,
    dpp_greedy_keep,
    dpp_greedy_order,
    max_min_diversity_keep,
    max_min_diversity_order,
    relevance_scores,
)
from tokred.ops.matching import (
    MergeOrder,
    MergePlan,
    aim_merge_frames,
    aim_round_sizes,
    bipartite_soft_matching,
    identity_plan,
    max_merge_r,
    proportional_attention_bias,
)
from tokred.ops.pooling import avg_pool_grid, pooled_grid_shape
from tokred.ops.provenance import (
    compose_sources,
    group_sizes,
    identity_source,
    provenance_matrix,
    source_from_keep,
)
from tokred.ops.selection import gather_tokens, protected_count, random_keep, random_scores, topk_keep

__all__ = [
    "MergeOrder",
    "MergePlan",
    "Rounding",
    "aim_merge_frames",
    "aim_round_sizes",
    "avg_pool_grid",
    "bipartite_soft_matching",
    "cdpruner_kernel",
    "compose_sources",
    "cosine_similarity_matrix",
    "dpp_greedy_keep",
    "dpp_greedy_order",
    "exact_ratio",
    "gather_tokens",
    "group_sizes",
    "identity_plan",
    "identity_source",
    "keep_count",
    "max_merge_r",
    "max_min_diversity_keep",
    "max_min_diversity_order",
    "pooled_grid_shape",
    "proportional_attention_bias",
    "protected_count",
    "provenance_matrix",
    "random_keep",
    "random_scores",
    "relevance_scores",
    "source_from_keep",
    "topk_keep",
]
