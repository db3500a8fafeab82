"""The data a sweep's jobs prepare identically, prepared once (`data.share_prepared`).

Every job of a sweep reads, cleans and tokenises the same preference pairs: the cleaned splits
(`worker.load_task`: generation or reading, and the length check that tokenises every pair) and
TRL's tokenised training set (`DPOTrainer._prepare_dataset`). With sharing on, the first job stores
each under `paths.cache_dir/data/` (through `alignsweep.sweep_cache`), keyed by a hash of what it
depends on, and the other jobs read it. On a GPU node this is CPU work that holds the GPU idle:
minutes per job for a dataset of TL;DR's size.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what the tokenizer does to text: its full serialisation (vocabulary, merges,
    normaliser, pre-tokeniser, post-processor) and its special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    special = [type(tokenizer).__name__, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]
    return hashlib.sha256((text + json.dumps(special, default=str)).encode()).hexdigest()[:24]


def _files_state(path: str) -> list:
    """(name, size, mtime) of a local data file or of every file under a data folder: a changed
    file gets a new key."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [(str(p.relative_to(root) if p != root else p.name), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def task_cache_path(cfg: Any, tokenizer: Any) -> Path:
    """Where the cleaned splits of `data` tokenised by `tokenizer` are shared."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("share_prepared", None)
    payload = {
        "data": data,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "files": _files_state(cfg.data.path) if cfg.data.path and Path(cfg.data.path).exists() else None,
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return Path(cfg.paths.cache_dir) / "data" / f"task-{key}.pt"


def tokenised_cache_path(cache_dir: str | Path, dataset: Any, tokenizer: Any, args: Any) -> Path:
    """Where TRL's tokenised form of `dataset` is shared: keyed by the rows, the tokenizer, TRL's
    version and the settings its preparation reads."""
    import trl

    digest = hashlib.sha256(
        json.dumps(
            [trl.__version__, tokenizer_fingerprint(tokenizer), args.max_length, args.truncation_mode],
            default=str,
        ).encode()
    )
    digest.update(json.dumps(dataset.to_dict(), sort_keys=True).encode())
    return Path(cache_dir) / f"trl-{digest.hexdigest()[:24]}.pt"


def load_or_prepare(path: Path, prepare: Any) -> tuple[Any, bool]:
    """`prepare()`'s datasets.Dataset, or the one a job of the sweep stored at `path`."""
    from datasets import Dataset, Features

    from alignsweep.sweep_cache import load_or_compute

    made = []

    def compute() -> dict:
        made.append(prepare())
        return {"columns": made[0].to_dict(), "features": made[0].features.to_dict()}

    saved, hit = load_or_compute(path, compute)
    if made:
        return made[0], hit
    return Dataset.from_dict(saved["columns"], features=Features.from_dict(saved["features"])), hit


PART_ROWS = 32  # the fewest rows per part of a dataset prepared in parts
MAX_PARTS = 16


def load_or_prepare_parts(folder: Path, dataset: Any, prepare: Any) -> tuple[Any, int, int]:
    """(prepared dataset, parts prepared here, parts): `prepare` (a row-wise preparation, such as
    TRL's tokenisation) applied to contiguous parts of `dataset`, each shared through its own lock
    (`sweep_cache.load_or_compute_parts`), so that jobs starting together split the work. Row-wise
    preparation of the parts, concatenated, is the preparation of the whole."""
    import math

    from datasets import Dataset, Features

    from alignsweep.sweep_cache import load_or_compute_row_parts

    n = len(dataset)
    n_parts = max(1, min(MAX_PARTS, n // PART_ROWS))

    def part(rows: range) -> dict:
        prepared = prepare(dataset.select(rows))
        return {"columns": prepared.to_dict(), "features": prepared.features.to_dict()}

    parts, computed = load_or_compute_row_parts(Path(folder), n, math.ceil(n / n_parts), part)
    columns = {name: [v for p in parts for v in p["columns"][name]] for name in parts[0]["columns"]}
    return Dataset.from_dict(columns, features=Features.from_dict(parts[0]["features"])), computed, len(parts)
