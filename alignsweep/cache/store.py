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
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)


def lock_path(path: Path) -> Path:
    """The lock file under which the shared file `path` is computed."""
    return Path(path).with_suffix(".lock")


def mark_used(path: Path) -> None:
    """Record that a job used the shared entry `path` (a file, or a folder of parts or a model):
    its modification time, by which `python -m alignsweep cache --unused-for DAYS` prunes."""
    try:
        os.utime(path)
    except OSError:  # removed meanwhile, or a read-only cache: nothing to record
        pass


def lock_held(lock_file: Path) -> bool:
    """Whether another process holds the lock `lock_file` right now (probed without waiting)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def computing_elsewhere(path: Path) -> bool:
    """Whether another process is computing the shared file `path` right now: it is not there
    yet and its lock is held."""
    return not Path(path).exists() and lock_held(lock_path(path))


def load_or_compute(
    path: Path, compute: Callable[[], Any], all_ranks: bool = True, wait: bool = True
) -> tuple[Any, Optional[bool]]:
    """(value, hit): the object saved at `path` (hit), else `compute()`'s result, saved there
    atomically (written to a temporary file, then renamed). `all_ranks=False`: only this process
    calls it (no collective; a rank other than 0 must not). `wait=False` (with `all_ranks=False`):
    (None, None) at once when another process is computing it, so that the caller can do other
    work first and ask again."""
    import torch

    from alignsweep.runtime.distributed import agree, rank_zero_lock
    from alignsweep.runtime.phase_clock import add_wait

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not wait:
        if all_ranks:
            raise ValueError("load_or_compute(wait=False) is for one process alone (all_ranks=False)")
        from filelock import FileLock, Timeout

        if path.exists():  # written whole (renamed into place): readable without the lock
            try:
                value = torch.load(path, weights_only=False)
                mark_used(path)
                return value, True
            except Exception:  # damaged: decided under the lock below
                pass
        lock = FileLock(str(lock_path(path)))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return None, None
        try:
            return _load_or_compute_locked(path, compute, bool)
        finally:
            lock.release()
    asked = time.perf_counter()
    with rank_zero_lock(lock_path(path)):
        add_wait(time.perf_counter() - asked)  # another job was computing it
        return _load_or_compute_locked(path, compute, agree if all_ranks else bool)


def _load_or_compute_locked(path: Path, compute: Callable[[], Any], decide: Callable[[bool], bool]) -> tuple[Any, bool]:
    """`load_or_compute` under the lock; `decide`: every rank's agreement on "rank 0 read it"."""
    import torch

    from alignsweep.runtime.distributed import rank

    value, readable = None, False
    if rank() == 0 and path.exists():
        try:
            value, readable = torch.load(path, weights_only=False), True
        except Exception as exc:  # a damaged file is computed again, not trusted
            log.warning("shared cache file %s unreadable (%s); computing it again", path, exc)
    if decide(readable):
        if rank() != 0:
            value = torch.load(path, weights_only=False)
        else:
            mark_used(path)
        return value, True
    value = compute()
    if rank() == 0:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(value, tmp)
        os.replace(tmp, path)
    return value, False


def load_or_compute_parts(folder: Path, n_parts: int, compute_part: Callable[[int], Any]) -> tuple[list, int]:
    """(values of parts 0..n_parts-1, how many this process computed), for one process alone.

    Jobs of a sweep often start together (a SLURM array): with one lock for the whole result, all
    but one would wait idle while it computes. Here every part has its own lock: a process computes
    each part nobody has claimed yet, reads the parts others finished, and waits only when every
    part left is being computed elsewhere, so jobs that start together split the work. A part is
    written atomically; one that cannot be read is computed again."""
    import torch
    from filelock import FileLock, Timeout

    from alignsweep.runtime.phase_clock import add_wait

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values: dict[int, Any] = {}
    computed = 0

    def path(i: int) -> Path:
        return folder / f"part-{i:05d}-of-{n_parts:05d}.pt"

    def read(i: int) -> bool:
        if not path(i).exists():
            return False
        try:
            values[i] = torch.load(path(i), weights_only=False)
            return True
        except Exception as exc:  # a damaged file is computed again, not trusted
            log.warning("shared cache file %s unreadable (%s); computing it again", path(i), exc)
            return False

    def claim(i: int, timeout: float) -> bool:
        """Compute part i under its lock unless it is there by then; False if the lock is busy."""
        nonlocal computed
        lock = FileLock(str(lock_path(path(i))))
        asked = time.perf_counter()
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            return False
        if timeout != 0:
            add_wait(time.perf_counter() - asked)  # another job was computing it
        try:
            if not read(i):
                values[i] = compute_part(i)
                tmp = path(i).with_name(f".{path(i).name}.{os.getpid()}.tmp")
                torch.save(values[i], tmp)
                os.replace(tmp, path(i))
                computed += 1
        finally:
            lock.release()
        return True

    pending = [i for i in range(n_parts) if not read(i)]
    while pending:
        left = [i for i in pending if not claim(i, timeout=0)]
        if left and len(left) == len(pending):  # every part left is being computed elsewhere
            claim(left[0], timeout=-1)
            left = left[1:]
        pending = [i for i in left if i not in values]
    mark_used(folder)
    return [values[i] for i in range(n_parts)], computed


def load_or_compute_row_parts(
    folder: Path, n_rows: int, rows_per_part: int, compute_rows: Callable[[range], Any]
) -> tuple[list, int]:
    """`load_or_compute_parts` over contiguous ranges of `rows_per_part` rows of a dataset of
    `n_rows` (the last range shorter): `compute_rows(range)` computes one part."""
    rows_per_part = max(1, rows_per_part)
    n_parts = max(1, math.ceil(n_rows / rows_per_part))
    return load_or_compute_parts(
        folder, n_parts, lambda i: compute_rows(range(i * rows_per_part, min((i + 1) * rows_per_part, n_rows)))
    )
