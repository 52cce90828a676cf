"""The transformers versions tokred is tested on, and the warning outside them (no torch or transformers import).

Kept apart from the seam (`tokred.adapters.hf`, which re-exports these names) so that ``import tokred`` can check the
version while staying light: the version comes from the installed distribution's metadata.
"""

from __future__ import annotations

import warnings
from importlib import metadata

#: The transformers versions the test suite passes on, as ``(lowest, first untested)``; ``pyproject.toml`` declares
#: exactly this range (a unit test compares them). Bump the upper bound only after the suite passed on the new
#: release (``make test-latest``, then ``make test`` with the bound raised; README, "Development").
TESTED_RANGE: tuple[str, str] = ("5.18.0", "5.25")


def _parse(version: str) -> tuple[int, ...]:
    """``"5.24.0"`` -> ``(5, 24, 0)``; pre-release and local suffixes are ignored (``"5.25.0.dev0"`` -> (5, 25, 0))."""
    parts: list[int] = []
    for piece in version.split("+")[0].split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def installed_version() -> str | None:
    """The installed transformers version string (from its metadata, without importing it), or ``None``."""
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def version_in_range(version: str, tested: tuple[str, str] = TESTED_RANGE) -> bool:
    """Whether ``version`` lies in ``[tested[0], tested[1])``."""
    return _parse(tested[0]) <= _parse(version) < _parse(tested[1])


def at_least(version: str) -> bool:
    """Whether the installed transformers is ``version`` or newer (``False`` when it is not installed)."""
    found = installed_version()
    return found is not None and _parse(found) >= _parse(version)


class UntestedTransformersWarning(UserWarning):
    """The installed transformers lies outside the range tokred's test suite passed on."""


_warned: set[str] = set()


def check_version(version: str | None = None, tested: tuple[str, str] = TESTED_RANGE) -> bool:
    """Warn once, in one line, when transformers is outside the tested range; returns whether it is inside.

    Args:
        version: The version to check; default the installed one (nothing happens when none is installed).
        tested: The tested range ``(lowest, first untested)``.
    """
    version = installed_version() if version is None else version
    if version is None or version_in_range(version, tested):
        return True
    if version not in _warned:
        _warned.add(version)
        spec = f"transformers>={tested[0]},<{tested[1]}"
        # warn_explicit with a pseudo file name: the warning prints as one line (no source line is looked up)
        warnings.warn_explicit(
            f"transformers {version} is outside tokred's tested range ({spec}); results may be wrong or the "
            f"pipeline may fail. Install a tested version: pip install '{spec}'",
            UntestedTransformersWarning,
            filename="<tokred>",
            lineno=1,
            module="tokred",
        )
    return False
