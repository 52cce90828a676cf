"""Small tests that pin entries of the strategy pages' "Where tokred differs from the reference code" lists."""

from __future__ import annotations

import pytest
import torch

import tokred
from tokred.errors import ConfigError
from tokred.ops import bipartite_soft_matching
from tokred.ops.attention import attention_rows, pagerank_importance


def test_merge_similarities_are_fp32_for_half_precision_metrics():
    """The reference matches in the input dtype (bf16 changes some matches); tokred always matches in fp32."""
    torch.manual_seed(0)
    metric = torch.randn(2, 196, 64).bfloat16()
    ours = bipartite_soft_matching(metric, 98)
    upcast = bipartite_soft_matching(metric.float(), 98)
    assert torch.equal(ours.source, upcast.source)


def test_fastv_and_pagerank_probabilities_are_fp32_for_half_precision_inputs():
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 40, 16).bfloat16(), torch.randn(1, 2, 40, 16).bfloat16()
    index = torch.arange(40)[None]
    rows = attention_rows(q[:, :, -1:], k, scaling=0.25, query_index=index[:, -1:])
    assert rows.dtype == torch.float32
    torch.testing.assert_close(
        rows, attention_rows(q[:, :, -1:].float(), k.float(), scaling=0.25, query_index=index[:, -1:])
    )
    pr = pagerank_importance(q, k, scaling=0.25)
    assert pr.dtype == torch.float32
    torch.testing.assert_close(pr, pagerank_importance(q.float(), k.float(), scaling=0.25))


def test_pooling_without_a_grid_refuses_a_non_square_count():
    merger = tokred.create_component("merger", "pooling")
    with pytest.raises(ConfigError, match="not a square"):
        merger.output_count(10)
    assert merger.output_count(16) == 4
