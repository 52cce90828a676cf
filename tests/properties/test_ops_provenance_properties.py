"""Properties of provenance (source vectors): composition, dense view, group sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tokred.ops import (
    compose_sources,
    group_sizes,
    identity_source,
    provenance_matrix,
    source_from_keep,
)

pytestmark = pytest.mark.properties


@st.composite
def sources(draw, *, batch: int, n_in: int, n_out: int):
    """Arbitrary source vectors (B, n_in) with values in [-1, n_out)."""
    arr = draw(hnp.arrays(np.int64, (batch, n_in), elements=st.integers(-1, n_out - 1)))
    return torch.from_numpy(np.array(arr, copy=True))


@st.composite
def chains(draw):
    b, n0, n1, n2 = (draw(st.integers(1, 3)), *(draw(st.integers(1, 12)) for _ in range(3)))
    return draw(sources(batch=b, n_in=n0, n_out=n1)), draw(sources(batch=b, n_in=n1, n_out=n2)), n1, n2


@given(chain=chains())
def test_composition_matches_dense_product(chain):
    first, second, n1, n2 = chain
    composed = compose_sources(first, second)
    dense = provenance_matrix(second, n2).long() @ provenance_matrix(first, n1).long()  # (B, n2, n0)
    assert torch.equal(provenance_matrix(composed, n2), dense.bool())
    assert bool((composed[first < 0] == -1).all())  # dropped stays dropped


@given(chain=chains())
def test_identity_is_neutral(chain):
    first, _, n1, _ = chain
    b, n0 = first.shape
    assert torch.equal(compose_sources(identity_source(b, n0), first), first)
    assert torch.equal(compose_sources(first, identity_source(b, n1)), first)


@given(chain=chains())
def test_group_sizes_are_row_sums_of_the_dense_view(chain):
    first, _, n1, _ = chain
    m = provenance_matrix(first, n1)
    assert torch.equal(group_sizes(first, n1), m.sum(-1))
    assert bool((m.sum(1) <= 1).all())  # each input in at most one output


@given(data=st.data())
def test_source_from_keep_inverts_the_selection(data):
    b, n = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 12))
    rows = [sorted(data.draw(st.lists(st.integers(0, n - 1), unique=True, min_size=1, max_size=n))) for _ in range(b)]
    k = min(len(r) for r in rows)
    keep = torch.tensor([r[:k] for r in rows])
    source = source_from_keep(keep, n)
    assert torch.equal(source.gather(1, keep), torch.arange(k).expand(b, k))
    assert int((source >= 0).sum()) == b * k
