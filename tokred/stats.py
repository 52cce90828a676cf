"""Statistics for comparing a reduced model against its baseline on the same samples.

- :func:`bootstrap_ci`: accuracy with a percentile-bootstrap confidence interval.
- :func:`mcnemar_exact`: exact McNemar test on paired correctness (same samples, two models).
- :func:`agreement`: fraction of samples on which two models gave the same answer.
- :func:`holm`: Holm-Bonferroni adjusted p-values of a family of tests.

numpy is imported inside the functions (cheap import of :mod:`tokred.stats`); scipy is not needed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["agreement", "bootstrap_ci", "holm", "mcnemar_exact"]

_CHUNK = 1 << 22  # resampled values held in memory at once by the generic bootstrap path


def _as_1d_float(values: Sequence[Any] | NDArray[Any], name: str) -> NDArray[np.float64]:
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _bootstrap_means(data: NDArray[np.float64], n_resamples: int, seed: int) -> NDArray[np.float64]:
    """Means of ``n_resamples`` resamples (with replacement, same size) of ``data``.

    For 0/1 data the resampled mean is exactly ``Binomial(n, p̂)/n`` in distribution, so it is drawn directly
    (O(n_resamples) instead of O(n·n_resamples)). Otherwise indices are drawn in chunks.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    n = data.size
    if np.all((data == 0.0) | (data == 1.0)):
        return rng.binomial(n, data.mean(), size=n_resamples) / n
    means = np.empty(n_resamples, dtype=np.float64)
    step = max(1, _CHUNK // n)
    for start in range(0, n_resamples, step):
        stop = min(start + step, n_resamples)
        means[start:stop] = data[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return means


def bootstrap_ci(
    correct: Sequence[bool] | Sequence[float] | NDArray[Any],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``correct`` with a percentile-bootstrap confidence interval.

    ``B = n_resamples`` resamples of the ``n`` values with replacement; the interval is the
    ``(1−c)/2`` and ``(1+c)/2`` quantiles (numpy's linear interpolation) of the ``B`` resampled means — the same
    definition as ``scipy.stats.bootstrap(..., method="percentile")``. For boolean (0/1) input the resampled mean
    is drawn as ``Binomial(n, p̂)/n``, which has exactly the distribution of the mean of a resample. The result
    is deterministic for a given ``seed``. It uses a different random stream from scipy's, so the two agree up to
    Monte-Carlo error: each 95 % endpoint has a standard error of about ``2.7·σ̂/√(n·B)`` (σ̂ the sample standard
    deviation), plus the ``1/n`` granularity of a mean of 0/1 values.

    Args:
        correct: Per-sample correctness (bool or 0/1) or any per-sample score.
        confidence: Coverage ``c`` in (0, 1).
        n_resamples: Number of bootstrap resamples ``B``.
        seed: Seed of numpy's ``default_rng``.

    Returns:
        ``(mean, low, high)``. With one sample, or identical values, all three are equal.

    Raises:
        ValueError: Empty or non-1-D input, non-finite values, ``confidence`` outside (0, 1), ``n_resamples < 1``.
    """
    import numpy as np

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    data = _as_1d_float(correct, "correct")
    means = _bootstrap_means(data, n_resamples, seed)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(data.mean()), float(low), float(high)


def _paired_bools(a: Sequence[bool] | NDArray[Any], b: Sequence[bool] | NDArray[Any]) -> tuple[list[bool], list[bool]]:
    a_list, b_list = [bool(x) for x in a], [bool(x) for x in b]
    if len(a_list) != len(b_list):
        raise ValueError(f"paired inputs differ in length: {len(a_list)} vs {len(b_list)}")
    return a_list, b_list


def mcnemar_exact(a_correct: Sequence[bool] | NDArray[Any], b_correct: Sequence[bool] | NDArray[Any]) -> float:
    """Exact two-sided McNemar test of paired correctness.

    With ``b`` = samples only ``a`` got right and ``c`` = samples only ``b`` got right (the discordant pairs),
    under H0 ``b ~ Binomial(b + c, 1/2)`` and::

        p = min(1, 2 · Σ_{i ≤ min(b, c)} C(b+c, i) / 2^(b+c))

    computed in exact integer arithmetic (equal to ``scipy.stats.binomtest(b, b + c, 0.5).pvalue``).

    Args:
        a_correct: Per-sample correctness of model A.
        b_correct: Per-sample correctness of model B on the same samples, same order.

    Returns:
        The p-value; ``1.0`` when there is no discordant pair (including empty input).

    Raises:
        ValueError: If the inputs differ in length.
    """
    a, b = _paired_bools(a_correct, b_correct)
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    term, tail = 1, 1  # C(n, 0)
    for i in range(k):
        term = term * (n - i) // (i + 1)
        tail += term
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def agreement(
    answers_a: Sequence[Hashable],
    answers_b: Sequence[Hashable],
    *,
    normalize: Callable[[Any], Hashable] | None = None,
) -> float:
    """Fraction of samples on which two models gave the same answer.

    Args:
        answers_a: Answers of model A.
        answers_b: Answers of model B on the same samples, same order.
        normalize: Applied to every answer before comparing (e.g. ``lambda s: s.strip().lower()``); answers are
            compared as given when ``None``.

    Returns:
        ``#{i: a_i == b_i} / n`` in [0, 1].

    Raises:
        ValueError: If the inputs differ in length or are empty.
    """
    if len(answers_a) != len(answers_b):
        raise ValueError(f"paired inputs differ in length: {len(answers_a)} vs {len(answers_b)}")
    if len(answers_a) == 0:
        raise ValueError("agreement of empty answer lists is undefined")
    norm = normalize if normalize is not None else (lambda x: x)
    same = sum(norm(x) == norm(y) for x, y in zip(answers_a, answers_b, strict=True))
    return same / len(answers_a)


HOLM_NOTE = (
    "exact McNemar test for every pair of strategies at the same budget (baseline and off-target points excluded), "
    "Holm-Bonferroni correction over the pairs of each budget; pairs with corrected p >= 0.05 are indistinguishable"
)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down), in the input order.

    With the ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of the ``k``-th is
    ``max_{j <= k} min(1, (m - j + 1) · p_(j))``; rejecting every hypothesis whose adjusted value is below ``α``
    controls the family-wise error rate at ``α`` under any dependence.

    Args:
        p_values: Raw p-values in [0, 1].

    Returns:
        Adjusted p-values, same length and order (``[]`` for no input).

    Raises:
        ValueError: If a value is outside [0, 1] or NaN.
    """
    values = [float(p) for p in p_values]
    if any(not 0.0 <= p <= 1.0 for p in values):
        raise ValueError(f"p-values must be in [0, 1], got {values}")
    m = len(values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: values[j])):
        running = max(running, min(1.0, (m - rank) * values[i]))
        adjusted[i] = running
    return adjusted
