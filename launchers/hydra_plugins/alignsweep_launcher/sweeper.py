"""Hydra's basic sweeper (cross product of the swept values), without its own pre-launch
composition of every job: alignsweep's launchers compose and validate every job before they start
any (alignsweep.launch.composer.prepare_jobs), so composing twice only doubled the wait on large grids.
A sweep directory this sweep created and left with nothing but Hydra's multirun.yaml (a dry run, a
refused sweep) is removed again.

A key given twice on the command line (`-m beta=0.1,1 beta=0.01,0.5`) is refused (exit 2): Hydra
would keep the last and silently drop a dimension of the grid."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, List, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


def repeated_keys(arguments: Sequence[str]) -> dict[str, list[str]]:
    """Keys set more than once among the command line's overrides: {key: [the overrides]}."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    seen: dict[str, list[str]] = defaultdict(list)
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        key = (f"{override.package}@" if override.package else "") + override.key_or_group
        seen[key].append(override.input_line)
    return {key: lines for key, lines in seen.items() if len(lines) > 1}


class PrevalidatedSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        return None

    def sweep(self, arguments: List[str]) -> Any:
        from alignsweep.results.rundir import discard_if_untouched

        repeated = repeated_keys(arguments)
        if repeated:
            lines = [
                f"{key}: given {len(lines)} times ({' and '.join(lines)}); Hydra would keep only the last. "
                f"Give one list, e.g. {key}={','.join(l.split('=', 1)[1] for l in lines)}"
                for key, lines in repeated.items()
            ]
            print("error: the sweep was not started:\n  " + "\n  ".join(lines), file=sys.stderr)
            sys.exit(2)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        existed = sweep_dir.exists()
        try:
            return super().sweep(arguments)
        finally:
            if not existed:
                discard_if_untouched(sweep_dir)
