"""The error every layer raises for a user mistake, and whether a failure can still be one.

This module is the bottom of the package: it imports nothing of alignsweep, so every room can
raise `ConfigError` without importing the configuration layer that checks the whole job.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user mistake in the configuration: reported as one message, exit code 2, no traceback."""


_started = False


def mark_started() -> None:
    """A job or a launcher has begun: from now on a failure is not a configuration error."""
    global _started
    _started = True


def started() -> bool:
    """Whether `mark_started` was called in this process (`python -m alignsweep` maps Hydra's
    exit code 1 to 2 only before it)."""
    return _started
