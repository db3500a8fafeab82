"""Files the jobs of a sweep share under `paths.cache_dir`: computed by the first job that needs
one, read by the others (the reference log-probs of the training pairs, step 0's evaluation).

`load_or_compute` holds a file lock while it decides, so concurrent jobs wait for one to compute
instead of all computing. When every rank of a multi-process job calls it (`all_ranks=True`),
rank 0 alone takes the lock and decides, the other ranks follow its decision (they may have to
compute together: collectives), and rank 0 alone writes; work that one rank does alone (rank 0's
evaluation) passes `all_ranks=False` and uses no collective. A file that cannot be read is
computed again, not trusted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


def load_or_compute(path: Path, compute: Callable[[], Any], all_ranks: bool = True) -> tuple[Any, bool]:
    """(value, hit): the object saved at `path` (hit), else `compute()`'s result, saved there
    atomically (written to a temporary file, then renamed). `all_ranks=False`: only this process
    calls it (no collective; a rank other than 0 must not)."""
    import torch

    from alignsweep.distributed import agree, rank, rank_zero_lock

    decide = agree if all_ranks else bool  # alone, the decision is this process's own
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rank_zero_lock(path.with_suffix(".lock")):
        value, readable = None, False
        if rank() == 0 and path.exists():
            try:
                value, readable = torch.load(path, weights_only=False), True
            except Exception as exc:  # a damaged file is computed again, not trusted
                log.warning("shared cache file %s unreadable (%s); computing it again", path, exc)
        if decide(readable):
            if rank() != 0:
                value = torch.load(path, weights_only=False)
            return value, True
        value = compute()
        if rank() == 0:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            torch.save(value, tmp)
            os.replace(tmp, path)
        return value, False
