"""Environment switches (``TOKRED_DEBUG``, ``TOKRED_TRACE_PLUGINS`` ...): 0/1/true/false/yes/no, nothing else.

A switch set to anything else is refused with its name rather than guessed (``TOKRED_DEBUG=0`` means off).

Example:
    >>> import os
    >>> os.environ["TOKRED_EXAMPLE"] = "no"
    >>> env_flag("TOKRED_EXAMPLE")
    False
"""

from __future__ import annotations

import os

from tokred.errors import ConfigError

TRUE = ("1", "true", "yes")
FALSE = ("0", "false", "no", "")
SWITCHES = (
    "TOKRED_DEBUG",
    "TOKRED_DISABLE_PLUGIN_AUTOLOAD",
    "TOKRED_TRACE_PLUGINS",
    "TOKRED_DISABLE_PROGRESS_BARS",
)


def env_flag(name: str, default: bool = False) -> bool:
    """The value of the boolean environment switch ``name`` (unset: ``default``).

    Raises:
        ConfigError: If it is set to anything but 0/1/true/false/yes/no (case-insensitive).
    """
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(f"environment switch {name}={raw!r}: use one of 1, true, yes (on) or 0, false, no (off)")


def check_switches() -> None:
    """Validate every known switch at once (the CLI calls this before any work).

    Raises:
        ConfigError: For the first switch with a value that is not 0/1/true/false/yes/no.
    """
    for name in SWITCHES:
        env_flag(name)
