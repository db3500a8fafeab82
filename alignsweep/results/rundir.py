"""The files of a run directory, written so that a crash at any moment leaves them readable.

    RUN_DIR/config.yaml     the resolved config of the job (written before it starts)
    RUN_DIR/status.json     state (pending/running/completed/failed/diverged), progress, error
    RUN_DIR/metrics.jsonl   one JSON object per evaluated checkpoint, appended whole
    RUN_DIR/worker.log      the worker's output (local launcher)
    RUN_DIR/identity.json   the job's identity and fingerprint (alignsweep.config.identity)
    RUN_DIR/.lock           held by the process running the job, released when it ends or dies

`status.json` is replaced atomically (write a temporary file, then rename). Metric rows are
appended with one write of a complete line and fsynced; a reader skips an incomplete last line.
This module imports no torch: the launcher and the collector read run directories too.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

STATUS = "status.json"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
CONFIG_JSON = "config.json"  # the same config, for fast reading
SAMPLES = "samples"  # samples/step_000123.jsonl: one line per evaluation prompt of that checkpoint
LOG = "worker.log"
LOCK = ".lock"
FINAL_STATES = ("completed", "failed", "diverged")


class RunInUse(RuntimeError):
    """Another live process holds the run directory's lock (it is running this job)."""


def hold_lock(run_dir: Path) -> Any:
    """Take the run directory's lock for as long as this process runs the job (released by
    `.release()`, or by the operating system when the process ends, however it ends).

    Raises RunInUse, naming the pid recorded in the status, when another process holds it.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(Path(run_dir) / LOCK))
    try:
        lock.acquire(timeout=2)  # a moment's grace for a `lock_held` probe (status, a launcher)
    except Timeout:
        pid = (read_status(run_dir) or {}).get("pid")
        raise RunInUse(f"{run_dir} is in use by another process" + (f" (pid {pid})" if pid else "")) from None
    return lock


def lock_held(run_dir: Path) -> bool:
    """Whether a live process holds the run directory's lock now (probed without waiting; a run
    directory that cannot be locked, e.g. a read-only copy, counts as free)."""
    from filelock import FileLock, Timeout

    path = Path(run_dir) / LOCK
    if not path.exists():
        return False
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` all at once: readers see the old or the new file, never half.

    On failure (a full disk, say) the temporary file is removed and the error names the file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; null means "not defined" (e.g. the error of one sample)
    return value


def write_status(run_dir: Path, **fields: Any) -> dict:
    """Merge `fields` into the run's status and write it atomically."""
    status = read_status(run_dir) or {}
    status.update(fields)
    status["updated"] = time.time()
    atomic_write_text(Path(run_dir) / STATUS, json.dumps(status, sort_keys=True))
    return status


def read_status(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / STATUS).read_text())
    except FileNotFoundError:
        return None


def append_metrics(run_dir: Path, row: dict) -> None:
    line = json.dumps({k: _clean(v) for k, v in row.items()}, sort_keys=True) + "\n"
    path = Path(run_dir) / METRICS
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        data = line.encode()
        written = os.write(fd, data)  # one write: a reader sees the whole line or an unfinished one
        if written != len(data):
            raise OSError(f"cannot write {path}: only {written} of {len(data)} bytes written (disk full?)")
        os.fsync(fd)
    except OSError as exc:
        raise OSError(getattr(exc, "errno", None), f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def rewrite_metrics(run_dir: Path, rows: list[dict]) -> None:
    """Replace the metrics file with `rows`, atomically."""
    text = "".join(json.dumps({k: _clean(v) for k, v in row.items()}, sort_keys=True) + "\n" for row in rows)
    atomic_write_text(Path(run_dir) / METRICS, text)


def read_metrics(run_dir: Path, problems: list[str] | None = None) -> list[dict]:
    """Every complete row of the run's metrics file.

    An interrupted last line (a writer killed mid-write) is skipped silently: it is not a row yet.
    Any other unreadable line is skipped and described in `problems` (file and line number) when a
    list is given, so callers can report it; without one it raises ValueError.
    """
    return list(_rows(Path(run_dir) / METRICS, problems))


def _rows(path: Path, problems: list[str] | None) -> Iterator[dict]:
    try:
        text = path.read_bytes().decode(errors="replace")  # no newline translation: "\r" is not a line end
    except FileNotFoundError:
        return
    # Split on "\n" only: other line-break characters inside a corrupt line must not cut it up.
    # The piece after the last "\n" is a line still being written (or cut off), not a row.
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError("not a metrics row (an object with a step)")
        except ValueError as exc:
            message = f"{path}:{number}: {exc}"
            if problems is None:
                raise ValueError(message) from None
            problems.append(message)
            continue
        yield row


# What Hydra writes into a run or sweep directory before alignsweep decides anything.
HYDRA_BOOKKEEPING = (".hydra", "multirun.yaml", "__main__.log", "alignsweep.log")


def discard_if_untouched(folder: Path) -> bool:
    """Remove `folder` if it holds nothing but Hydra's bookkeeping (a dry run, or a run refused
    before it started, leaves no empty timestamped directory behind); True if it was removed.
    A folder with anything else in it (a config, metrics, a user's file) is kept as it is."""
    import shutil

    folder = Path(folder)
    if not folder.is_dir() or any(p.name not in HYDRA_BOOKKEEPING for p in folder.iterdir()):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()
