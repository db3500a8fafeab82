"""Shared results computed in parts (`sweep_cache.load_or_compute_parts`): processes that start
together split the parts instead of waiting for one to compute everything."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import torch

from alignsweep.sweep_cache import load_or_compute_parts


def _square(i: int) -> torch.Tensor:
    time.sleep(0.3)
    return torch.tensor([i * i])


def _job(folder: str, n: int, out) -> None:
    values, computed = load_or_compute_parts(Path(folder), n, _square)
    out.put(([int(v) for v in values], computed))


def test_processes_that_start_together_split_the_parts(tmp_path):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_job, args=(str(tmp_path / "parts"), 8, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [values for values, _ in results] == [[i * i for i in range(8)]] * 2
    counts = sorted(computed for _, computed in results)
    assert sum(counts) == 8 and counts[0] >= 1, counts  # each computed a share; no part twice
    # a later process reads every part
    values, computed = load_or_compute_parts(tmp_path / "parts", 8, _square)
    assert computed == 0 and [int(v) for v in values] == [i * i for i in range(8)]


def test_a_damaged_part_is_computed_again(tmp_path):
    load_or_compute_parts(tmp_path, 3, _square)
    damaged = sorted(tmp_path.glob("part-*.pt"))[1]
    damaged.write_bytes(b"half-written")
    values, computed = load_or_compute_parts(tmp_path, 3, _square)
    assert computed == 1 and [int(v) for v in values] == [0, 1, 4]
