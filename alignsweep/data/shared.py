"""The data a sweep's jobs prepare identically, prepared once (`data.share_prepared`).

Every job of a sweep reads, cleans and tokenises the same preference pairs: the cleaned splits
(`worker.load_task`: generation or reading, and the length check that tokenises every pair) and
TRL's tokenised training set (`DPOTrainer._prepare_dataset`). With sharing on, the first job stores
each under `paths.cache_dir/data/` (through `alignsweep.cache.store`), keyed by a hash of what it
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


def arrow_table(dataset: Any) -> Any:
    """The pyarrow Table of a datasets.Dataset's rows as the dataset reads them (the indices
    mapping of a `filter` or `select` applied), without a Python object per value."""
    return dataset.with_format("arrow")[:]


def _ipc_stream(table: Any) -> Any:
    """A pyarrow Table as one Arrow IPC stream (a pyarrow Buffer)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def rows_digest(digest: Any, dataset: Any) -> Any:
    """`digest` updated with the rows of `dataset`: the Arrow IPC stream of its table, in one
    chunk (3-4x faster than hashing the rows as JSON, and no Python object per value)."""
    digest.update(_ipc_stream(arrow_table(dataset).combine_chunks()))
    return digest


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
            [trl.__version__, tokenizer_fingerprint(tokenizer), args.max_length, args.truncation_mode, "arrow"],
            default=str,
        ).encode()
    )
    return Path(cache_dir) / f"trl-{rows_digest(digest, dataset).hexdigest()[:24]}.pt"


def _to_saved(dataset: Any) -> dict:
    """A datasets.Dataset as Arrow IPC bytes and its features: read back without building a Python
    object per value (a job holding a model has millions of objects alive, and unpickling lists
    of token ids made the garbage collector scan them all: 0.4 s per job on 4k pairs)."""
    return {"arrow": _ipc_stream(arrow_table(dataset)).to_pybytes(), "features": dataset.features.to_dict()}


def _from_saved(saved: list[dict]) -> Any:
    """The dataset of the concatenated saved parts (`_to_saved`)."""
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo, Features

    tables = [pa.ipc.open_stream(pa.py_buffer(part["arrow"])).read_all() for part in saved]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return Dataset(table, info=DatasetInfo(features=Features.from_dict(saved[0]["features"])))


def load_or_prepare(path: Path, prepare: Any) -> tuple[Any, bool]:
    """`prepare()`'s datasets.Dataset, or the one a job of the sweep stored at `path`."""
    from alignsweep.cache.store import load_or_compute

    made = []

    def compute() -> dict:
        made.append(prepare())
        return _to_saved(made[0])

    saved, hit = load_or_compute(path, compute)
    if made:
        return made[0], hit
    return _from_saved([saved]), hit


PART_ROWS = 32  # the fewest rows per part of a dataset prepared in parts
MAX_PARTS = 16


def load_or_prepare_parts(folder: Path, dataset: Any, prepare: Any) -> tuple[Any, int, int]:
    """(prepared dataset, parts prepared here, parts): `prepare` (a row-wise preparation, such as
    TRL's tokenisation) applied to contiguous parts of `dataset`, each shared through its own lock
    (`sweep_cache.load_or_compute_parts`), so that jobs starting together split the work. Row-wise
    preparation of the parts, concatenated, is the preparation of the whole."""
    import math

    from alignsweep.cache.store import load_or_compute_row_parts

    n = len(dataset)
    n_parts = max(1, min(MAX_PARTS, n // PART_ROWS))
    parts, computed = load_or_compute_row_parts(
        Path(folder), n, math.ceil(n / n_parts), lambda rows: _to_saved(prepare(dataset.select(rows)))
    )
    return _from_saved(parts), computed, len(parts)
