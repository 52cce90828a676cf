"""How many of ``n`` tokens a ratio keeps, computed exactly (no float error), with an explicit rounding rule.

``int(0.29 * 100)`` is 28 because ``0.29 * 100 == 28.999999999999996`` in binary floating point. Every keep count
in tokred (schedulers, mergers, the random baseline) goes through `keep_count`, which reads a float ratio as the
decimal number it prints as (``Fraction(str(0.29)) == 29/100``) and multiplies in exact rational arithmetic, so
``-o keep_ratio=0.29`` keeps 29 of 100 tokens in every strategy. Plugins should use it too.

Rounding rules (each built-in states the one its reference code uses):

* ``"floor"``: ``floor(ratio * n)``, what ``int()`` truncation does in AIM's and PyramidDrop's code;
* ``"round"``: nearest integer, halves to even, what Python's ``round()`` does in FastV's Hugging Face code and
  DivPrune's;
* ``"ceil"``: ``ceil(ratio * n)``.

Example:
    >>> from tokred.ops import keep_count
    >>> int(0.29 * 100), keep_count(100, 0.29)
    (28, 29)
    >>> keep_count(5, 0.5, "floor"), keep_count(5, 0.5, "round"), keep_count(5, 0.5, "ceil")
    (2, 2, 3)
    >>> keep_count(100, 0.5 ** 3)  # powers are exact too: pass the ratio, not a float product
    12
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal

__all__ = ["ROUNDING_HELP", "Rounding", "exact_ratio", "keep_count"]

Rounding = Literal["floor", "round", "ceil"]

#: One-line description of the rounding options, for option descriptions.
ROUNDING_HELP = "floor = int() truncation, round = nearest with halves to even (Python round), ceil"


def exact_ratio(ratio: float | int | str | Fraction) -> Fraction:
    """The exact rational a ratio stands for: a float is read as the shortest decimal that prints as it.

    Args:
        ratio: A float (``0.29`` -> 29/100), an int, a decimal string or a `fractions.Fraction` (kept as is).

    Returns:
        The ratio as a `fractions.Fraction`.

    Raises:
        ValueError: If the ratio is not finite.
    """
    if isinstance(ratio, Fraction):
        return ratio
    if isinstance(ratio, float) and not math.isfinite(ratio):
        raise ValueError(f"ratio must be finite, got {ratio}")
    return Fraction(str(ratio)) if isinstance(ratio, float) else Fraction(ratio)


def keep_count(
    n: int,
    ratio: float | int | str | Fraction,
    rounding: Rounding = "floor",
    *,
    power: int = 1,
) -> int:
    """Tokens of ``n`` that ``ratio ** power`` keeps, in exact arithmetic, clipped to ``[0, n]``.

    Args:
        n: Number of tokens (>= 0).
        ratio: Fraction of tokens kept; see `exact_ratio` for how a float is read.
        rounding: ``"floor"``, ``"round"`` (halves to even) or ``"ceil"``.
        power: Exponent applied to the exact ratio (PyramidDrop's ``ratio ** stage``).

    Returns:
        The kept count.

    Raises:
        ValueError: On a negative ``n`` or power, or an unknown rounding rule.
    """
    if n < 0 or power < 0:
        raise ValueError(f"need n >= 0 and power >= 0, got n={n}, power={power}")
    value = exact_ratio(ratio) ** power * n
    if rounding == "floor":
        k = math.floor(value)
    elif rounding == "round":
        k = round(value)  # Fraction.__round__: nearest, halves to even
    elif rounding == "ceil":
        k = math.ceil(value)
    else:
        raise ValueError(f"rounding must be 'floor', 'round' or 'ceil', got {rounding!r}")
    return min(n, max(0, int(k)))
