"""Hydra callbacks: checks that must happen before Hydra creates any directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback


def unwritable(path: str) -> str | None:
    """Why `path` cannot be created and written to, or None if it can.

    Tried, not asked: a file is created and removed in the nearest existing directory, because
    `os.access` answers yes to root on a read-only filesystem (the usual case in containers).
    """
    import tempfile

    target = Path(path).absolute()
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            return "no existing parent directory"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a directory"
    try:
        fd, name = tempfile.mkstemp(prefix=".alignsweep-write-test-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return f"{probe} is not writable ({exc.strerror or exc})"
    return None


class CheckPaths(Callback):
    """Refuse to start when the output or cache directory cannot be written (exit code 2),
    instead of failing half-way with a traceback."""

    def _check(self, config: Any, out_key: str) -> None:
        from omegaconf import OmegaConf

        checks = [("paths.cache_dir", config.paths.cache_dir)]
        try:
            out = str(OmegaConf.select(config, out_key))
            inside = Path(out).absolute().is_relative_to(Path(str(config.paths.output_dir)).absolute())
            checks.append(("paths.output_dir" if inside else out_key, out))
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
