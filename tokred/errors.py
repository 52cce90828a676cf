"""Exceptions raised by tokred. Every message says what is wrong and what would work."""

from __future__ import annotations


class TokredError(Exception):
    """Base class of tokred's own errors (the CLI prints these as one line on stderr)."""


class ConfigError(TokredError, ValueError):
    """An option is unknown, out of range, or inconsistent with another option."""


class UnknownNameError(TokredError, KeyError):
    """A component, strategy, adapter or config name is not registered; the message suggests close names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RegistrationError(TokredError, ValueError):
    """A plugin registered a duplicate name or an object of the wrong type."""


class UnsupportedModelError(TokredError, TypeError):
    """No adapter handles this model, or the model uses a feature the pipeline cannot reduce correctly."""


class UnsupportedModeError(TokredError, RuntimeError):
    """A generation or attention mode the patched model cannot run correctly (static cache, FA2 on CPU, ...)."""


class OutputError(TokredError, OSError):
    """An output folder cannot be used: not a folder, not writable, full, or locked by another run."""


class PluginOutputError(TokredError, RuntimeError):
    """A plugin component returned something the pipeline cannot use (wrong shape, dtype, count or NaN values)."""


class InterruptedRun(TokredError):
    """The run was interrupted (Ctrl-C); the message says what was kept. The CLI exits with 130."""
