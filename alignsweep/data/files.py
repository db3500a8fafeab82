"""Where preference data lives, what columns, layout and splits it has, checked cheaply before
anything is queued.

`data.path` is a local file (JSON lines, JSON, CSV, Parquet) or folder (of such files, or a
`datasets.save_to_disk` Dataset or DatasetDict folder). Everything here reads only headers, first
records, schemas and JSON metadata, and imports neither `datasets` nor torch, so the configuration
layer runs it in every dry run (`check_local`, `check_data_model`).
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

from alignsweep.errors import ConfigError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
HELDOUT_SPLITS = ("test_prefs", "test", "validation", "valid", "heldout")  # a dataset's own held-out split
TRAIN_SPLITS = ("train_prefs", "train")


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


def split_of_file(file: Path) -> str:
    """The split a data file holds by its name, as the hub names them (`train_prefs-00000-of-00001.parquet`,
    `test.jsonl`); any other name holds `train`."""
    stem = re.split(r"[-.]", file.name, maxsplit=1)[0]
    return stem if stem in HELDOUT_SPLITS + TRAIN_SPLITS or stem.startswith(("train", "test")) else "train"


def read_json_records(file: Path) -> Any:
    """A .json or .jsonl file's records: a JSON array or object, or JSON lines (what
    `Dataset.to_json` writes, whatever the suffix); an unreadable line is kept as a marker row."""
    text = file.read_text(errors="replace")
    if file.suffix == ".json":
        try:
            return json.loads(text)
        except ValueError:
            pass  # JSON lines under a .json name
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"__unreadable__": f"{file}:{number}"})
    return out


def _first_records(path: Path) -> dict[str, Optional[dict]]:
    """Split name -> its first record (None where only the schema is known cheaply)."""
    if path.is_dir():
        info = path / "dataset_dict.json"
        if info.exists():
            return {name: None for name in json.loads(info.read_text()).get("splits", [])}
        return {"train": None}
    if path.suffix in (".jsonl", ".json"):
        if path.suffix == ".jsonl":
            with open(path, errors="replace") as fh:
                for line in fh:
                    if line.strip():
                        record = json.loads(line)
                        return {split_of_file(path): record if isinstance(record, dict) else {}}
            return {split_of_file(path): {}}
        data = read_json_records(path)
        if isinstance(data, dict):
            return {k: (v[0] if v and isinstance(v[0], dict) else {}) for k, v in data.items() if isinstance(v, list)}
        return {split_of_file(path): data[0] if data and isinstance(data[0], dict) else {}}
    if path.suffix == ".csv":
        with open(path, newline="", errors="replace") as fh:
            return {split_of_file(path): {k: "" for k in next(csv.reader(fh), [])}}
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path).read_row_group(0) if pq.ParquetFile(path).num_row_groups else None
        rows = table.slice(0, 1).to_pylist() if table is not None else []
        return {split_of_file(path): rows[0] if rows else {n: None for n in pq.read_schema(path).names}}
    raise DataError(f"data.path: {path}: unsupported file type (expected one of {', '.join(SUFFIXES)})")


def _features(path: Path, split: Optional[str]) -> dict:
    info = path / "dataset_info.json" if split is None else path / split / "dataset_info.json"
    return json.loads(info.read_text()).get("features", {}) if info.exists() else {}


def _conversational_feature(feature: Any) -> bool:
    """A datasets feature that holds chat messages: a list of {role, content} structs."""
    inner = feature.get("feature") if isinstance(feature, dict) else None
    if isinstance(feature, list) and feature:
        inner = feature[0]
    return isinstance(inner, dict) and "role" in inner and "content" in inner


def describe_local(path: str) -> dict:
    """{split: {"columns": [...], "conversational": {column: bool}}} of the local data, read cheaply."""
    out: dict[str, dict] = {}
    for file in _files(Path(path)):
        try:
            firsts = _first_records(file)
        except (ValueError, OSError) as exc:
            raise DataError(f"data.path: {file} cannot be read: {exc}") from None
        for split, record in firsts.items():
            if record is None:  # a save_to_disk folder: its features
                feats = _features(file, None if (file / "dataset_info.json").exists() else split)
                entry = {"columns": list(feats), "conversational": {k: _conversational_feature(v) for k, v in feats.items()}}
            else:
                entry = {"columns": list(record), "conversational": {
                    k: isinstance(v, list) and bool(v) and isinstance(v[0], dict) and "role" in v[0]
                    for k, v in record.items()}}
            out.setdefault(split, entry)
    return out


def columns_of(path: Path) -> list[str]:
    """Column names of a data file, read cheaply (first record / header / schema)."""
    return next(iter(describe_local(str(path)).values()), {"columns": []})["columns"]


def choose_splits(available: list[str], split: Optional[str], heldout_split: Optional[str], where: str) -> tuple[str, Optional[str]]:
    """(training split, held-out split or None): `data.split` (null: train_prefs or train, or the
    only split) and `data.heldout_split` (null: the data's own test split when it has one; `none`:
    held out from the training split by prompt). A name the data lacks is refused, naming its splits."""
    names = ", ".join(available)
    if split is None:
        split = next((s for s in TRAIN_SPLITS if s in available), available[0] if len(available) == 1 else None)
        if split is None:
            raise DataError(f"{where} has splits {names} and none is called train; set data.split to one of them")
    elif split not in available:
        raise DataError(f"data.split: {where} has no split {split!r} (it has: {names}); set data.split to one of them")
    if heldout_split is None:
        heldout_split = next((s for s in HELDOUT_SPLITS if s in available and s != split), None)
    elif heldout_split == "none":
        heldout_split = None
    elif heldout_split not in available:
        raise DataError(
            f"data.heldout_split: {where} has no split {heldout_split!r} (it has: {names}); set data.heldout_split "
            "to one of them, or to none to hold pairs out of the training split by prompt"
        )
    return split, heldout_split


def check_local(path: str, columns: tuple[Optional[str], str, str], split: Optional[str] = None,
                heldout_split: Optional[str] = None) -> dict:
    """Fail early, naming the file and what is missing, if `path` cannot be preference data.
    The prompt column may be absent (an implicit prompt, extracted from chosen and rejected).
    Returns `describe_local`'s description of the chosen training split."""
    root = Path(path)
    if not root.exists():
        raise ConfigError(f"data.path: {path} does not exist")
    found = describe_local(path)
    train, _ = choose_splits(sorted(found), split, heldout_split, f"data.path {path}")
    entry = found[train]
    missing = [c for c in columns[1:] if c not in entry["columns"]]
    if missing:
        raise DataError(
            f"data.path: {path} (split {train}) has no column(s) {', '.join(missing)} (found: "
            f"{', '.join(entry['columns']) or 'none'}); set data.chosen_column / data.rejected_column to the names it uses"
        )
    return entry


def has_chat_template(folder: str) -> bool:
    """Whether a local checkpoint's tokenizer has a chat template (its JSON or .jinja files)."""
    if os.path.exists(os.path.join(folder, "chat_template.jinja")) or os.path.exists(
        os.path.join(folder, "chat_template.json")
    ):
        return True
    config = os.path.join(folder, "tokenizer_config.json")
    try:
        with open(config) as fh:
            return bool(json.load(fh).get("chat_template"))
    except (OSError, ValueError):
        return False
