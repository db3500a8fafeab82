"""Hydra's basic sweeper (cross product of the swept values), without its own pre-launch
composition of every job: alignsweep's launchers compose and validate every job before they start
any (alignsweep.launch.composer.prepare_jobs), so composing twice only doubled the wait on large grids.
A sweep directory this sweep created and left with nothing but Hydra's multirun.yaml (a dry run, a
refused sweep) is removed again."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class PrevalidatedSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        return None

    def sweep(self, arguments: list[str]) -> Any:
        from alignsweep.results.rundir import discard_if_untouched

        sweep_dir = Path(self.config.hydra.sweep.dir)
        existed = sweep_dir.exists()
        try:
            return super().sweep(arguments)
        finally:
            if not existed:
                discard_if_untouched(sweep_dir)
