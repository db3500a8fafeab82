"""The files of a run directory, written so that a crash at any moment leaves them readable.

    RUN_DIR/config.yaml     the resolved config of the job (written before it starts)
    RUN_DIR/status.json     state (pending/running/completed/failed/diverged), progress, error
    RUN_DIR/metrics.jsonl   one JSON object per evaluated checkpoint, appended whole
    RUN_DIR/worker.log      the worker's output (local launcher)

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
LOG = "worker.log"
FINAL_STATES = ("completed", "failed", "diverged")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
    fd = os.open(Path(run_dir) / METRICS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
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
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if not line.endswith("\n"):
            break  # the writer was killed mid-line
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
