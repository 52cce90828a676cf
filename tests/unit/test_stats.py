"""Statistics against scipy on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from tokred.stats import agreement, bootstrap_ci, holm, mcnemar_exact


def paired(only_a: int, only_b: int, both: int = 5, neither: int = 3) -> tuple[list[bool], list[bool]]:
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return a, b


@pytest.mark.parametrize(
    ("only_a", "only_b"), [(0, 1), (1, 0), (3, 7), (7, 3), (5, 5), (0, 20), (12, 30), (100, 140), (400, 371)]
)
def test_mcnemar_matches_scipy_binomtest(only_a, only_b):
    a, b = paired(only_a, only_b)
    expected = sps.binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue
    assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_known_values_and_edges():
    assert mcnemar_exact(*paired(0, 6)) == pytest.approx(2 / 64)  # 2 · (1/2)^6
    assert mcnemar_exact(*paired(1, 5)) == pytest.approx(2 * 7 / 64)  # 2 · (C(6,0) + C(6,1)) / 2^6
    assert mcnemar_exact(*paired(0, 0)) == 1.0  # no discordant pair
    assert mcnemar_exact([], []) == 1.0
    assert mcnemar_exact(np.array([1, 0, 1]), np.array([1, 0, 1])) == 1.0
    assert mcnemar_exact(*paired(3, 7)) == mcnemar_exact(*paired(7, 3))  # symmetric
    assert mcnemar_exact(*paired(0, 1000)) == 2.0**-999  # exact big-integer arithmetic down to tiny p-values
    with pytest.raises(ValueError, match="length"):
        mcnemar_exact([True], [True, False])


def test_bootstrap_deterministic_and_bracketing():
    rng = np.random.default_rng(1)
    correct = rng.random(300) < 0.62
    first = bootstrap_ci(correct, seed=3)
    assert first == bootstrap_ci(list(correct), seed=3)
    assert first != bootstrap_ci(correct, seed=4)
    mean, low, high = first
    assert mean == pytest.approx(correct.mean())
    assert low < mean < high
    narrow = bootstrap_ci(correct, confidence=0.5, seed=3)
    assert low < narrow[1] < narrow[2] < high


@pytest.mark.parametrize(("n", "p", "binary"), [(1000, 0.7, True), (400, 0.35, True), (500, 0.0, False)])
def test_bootstrap_close_to_scipy_percentile(n, p, binary):
    rng = np.random.default_rng(7)
    data = (rng.random(n) < p).astype(float) if binary else rng.normal(2.0, 1.5, n)
    n_resamples = 20000
    mean, low, high = bootstrap_ci(data, n_resamples=n_resamples, seed=0)
    ref = sps.bootstrap((data,), np.mean, method="percentile", n_resamples=n_resamples, random_state=0)
    # Honest tolerance: the two use different random streams. The Monte-Carlo s.e. of a 95 % percentile endpoint is
    # about 2.7·σ/√(n·B); the difference of two independent estimates has s.e. √2 times that. Allow 5 s.e. of the
    # difference, plus one 1/n step of the discrete distribution of a mean of 0/1 values.
    sigma = data.std(ddof=1)
    tol = 5 * math.sqrt(2) * 2.7 * sigma / math.sqrt(n * n_resamples) + (1 / n if binary else 0.0)
    assert low == pytest.approx(ref.confidence_interval.low, abs=tol)
    assert high == pytest.approx(ref.confidence_interval.high, abs=tol)
    # and both are near the normal-theory interval (sanity of the scale: within 15 % of its half-width)
    half = 1.96 * sigma / math.sqrt(n)
    assert high - low == pytest.approx(2 * half, rel=0.15)
    assert mean == pytest.approx(data.mean())


def test_bootstrap_edges():
    assert bootstrap_ci([True] * 20) == (1.0, 1.0, 1.0)
    assert bootstrap_ci([False]) == (0.0, 0.0, 0.0)
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    for bad in ([], [[1, 0]], [float("nan"), 1.0]):
        with pytest.raises(ValueError):
            bootstrap_ci(bad)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([True, False], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([True, False], n_resamples=0)


def test_agreement():
    assert agreement(["red", "2", "yes"], ["red", "3", "yes"]) == pytest.approx(2 / 3)
    assert agreement(["Red ", "no"], ["red", "no"]) == 0.5
    assert agreement(["Red ", "no"], ["red", "no"], normalize=lambda s: s.strip().lower()) == 1.0
    assert agreement([1, 2], [1, 2]) == 1.0
    with pytest.raises(ValueError, match="length"):
        agreement(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        agreement([], [])


def test_holm_known_values():
    # sorted 0.01, 0.02, 0.03, 0.5 -> 4·0.01, 3·0.02, max(0.06, 2·0.03), max(0.06, 0.5); back in input order
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    assert holm([0.4, 0.4]) == pytest.approx([0.8, 0.8])
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
    assert holm([0.2]) == [0.2] and holm([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, float("nan")])


@pytest.mark.parametrize("seed", range(5))
def test_holm_is_monotone_and_never_below_raw(seed):
    raw = np.random.default_rng(seed).uniform(0, 0.2, size=7).tolist()
    adjusted = holm(raw)
    assert all(q >= p for p, q in zip(raw, adjusted))
    order = sorted(range(7), key=lambda i: raw[i])
    assert [adjusted[i] for i in order] == sorted(adjusted)  # step-down keeps the order of the raw p-values
    assert min(adjusted) == pytest.approx(7 * min(raw))  # the smallest gets the full Bonferroni factor
