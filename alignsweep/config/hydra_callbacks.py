"""Hydra callbacks: checks that must happen before Hydra creates any directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback


def unwritable(path: str) -> str | None:
    """Why `path` cannot be created and written to, or None if it can."""
    target = Path(path).absolute()
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            return "no existing parent directory"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


class CheckPaths(Callback):
    """Refuse to start when the output or cache directory cannot be written (exit code 2),
    instead of failing half-way with a traceback."""

    def _check(self, config: Any, out_key: str) -> None:
        from omegaconf import OmegaConf

        checks = [("paths.cache_dir", config.paths.cache_dir)]
        try:
            checks.append((out_key, OmegaConf.select(config, out_key)))
        except Exception:  # an interpolation Hydra resolves only later
            pass
        for key, value in checks:
            reason = unwritable(str(value))
            if reason:
                print(f"error: {key}: cannot write to {value}: {reason}", file=sys.stderr)
                sys.exit(2)

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")
