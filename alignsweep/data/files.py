"""Where preference data lives and what columns it has, checked cheaply before anything is queued.

`data.path` is a local file (JSON lines, JSON, CSV, Parquet) or folder (of such files, or a
`datasets.save_to_disk` folder). `check_local` reads only headers, first records and schemas, and
imports neither `datasets` nor torch, so the configuration layer runs it in every dry run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from alignsweep.errors import ConfigError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class DataError(ConfigError):
    """The data cannot be trained on as given (named file, named problem)."""


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        return [path]  # a datasets.save_to_disk folder
    found = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES)
    if not found:
        raise DataError(f"data.path: {path} holds no {', '.join(SUFFIXES)} files and is not a datasets folder")
    return found


def columns_of(path: Path) -> list[str]:
    """Column names of a data file, read cheaply (first record / header / schema)."""
    if path.is_dir():
        info = path / "dataset_info.json"
        if not info.exists():  # a DatasetDict: look at its train split
            info = path / "train" / "dataset_info.json"
        return list(json.loads(info.read_text()).get("features", {}))
    if path.suffix == ".jsonl":
        with open(path, errors="replace") as fh:
            for line in fh:
                if line.strip():
                    record = json.loads(line)
                    return list(record) if isinstance(record, dict) else []
        return []
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        data = data.get("train", data) if isinstance(data, dict) else data
        return list(data[0]) if isinstance(data, list) and data and isinstance(data[0], dict) else []
    if path.suffix == ".csv":
        with open(path, newline="", errors="replace") as fh:
            return next(csv.reader(fh), [])
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    raise DataError(f"data.path: {path}: unsupported file type (expected one of {', '.join(SUFFIXES)})")


def check_local(path: str, columns: tuple[str, str, str]) -> None:
    """Fail early, naming the file and what is missing, if `path` cannot be preference data."""
    root = Path(path)
    if not root.exists():
        raise ConfigError(f"data.path: {path} does not exist")
    for file in _files(root):
        try:
            found = columns_of(file)
        except (ValueError, OSError) as exc:
            raise DataError(f"data.path: {file} cannot be read: {exc}") from None
        missing = [c for c in columns if c not in found]
        if missing:
            raise DataError(
                f"data.path: {file} has no column(s) {', '.join(missing)} (found: {', '.join(found) or 'none'}); "
                "set data.prompt_column / data.chosen_column / data.rejected_column to the names it uses"
            )
