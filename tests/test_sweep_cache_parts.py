"""Shared results computed in parts (`sweep_cache.load_or_compute_parts`): processes that start
together split the parts instead of waiting for one to compute everything."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import torch

from alignsweep.cache.store import load_or_compute, load_or_compute_parts


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


def test_a_dataset_prepared_in_parts_is_the_dataset_prepared_whole(tmp_path):
    """Row-wise preparation (TRL's: map, then a filter) of contiguous parts, concatenated, equals
    the preparation of the whole: the same rows, order and column types."""
    from datasets import Dataset

    from alignsweep.data.shared import load_or_prepare_parts

    rows = Dataset.from_list([{"prompt": f"p{i}", "chosen": " a" * (i % 7), "rejected": " b"} for i in range(200)])

    def prepare(ds):
        ds = ds.map(lambda r: {"chosen_ids": [len(w) for w in r["chosen"].split()], "n": len(r["chosen"])})
        return ds.filter(lambda r: r["n"] % 3 != 1)

    whole = prepare(rows)
    parted, computed, parts = load_or_prepare_parts(tmp_path / "parts", rows, prepare)
    assert parts == 6 and computed == 6
    assert parted.to_dict() == whole.to_dict() and parted.features == whole.features
    again, computed, _ = load_or_prepare_parts(tmp_path / "parts", rows, prepare)
    assert computed == 0 and again.to_dict() == whole.to_dict()


def _slow_value() -> int:
    time.sleep(1.0)
    return 7


def _compute_or_wait(path: str, out) -> None:
    from alignsweep.runtime.phase_clock import waited

    before = waited()  # this process's count so far
    value, hit = load_or_compute(Path(path), _slow_value, all_ranks=False)
    out.put((value, hit, waited() - before))


def test_a_job_waiting_for_another_says_how_long(tmp_path):
    """The seconds a job sits on a file another job is still computing are counted (the run's
    `waited_s`); the job that computes waits for nobody."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    first = ctx.Process(target=_compute_or_wait, args=(str(tmp_path / "v.pt"), out))
    first.start()
    while not (tmp_path / "v.lock").exists():
        time.sleep(0.01)
    time.sleep(0.2)  # the first holds the lock by now
    _compute_or_wait(str(tmp_path / "v.pt"), out)
    first.join(timeout=60)
    results = sorted([out.get(timeout=60), out.get(timeout=60)], key=lambda r: r[1])
    (value_a, hit_a, waited_a), (value_b, hit_b, waited_b) = results
    assert value_a == value_b == 7 and (hit_a, hit_b) == (False, True)
    assert waited_a < 0.1 and 0.4 < waited_b < 1.5, (waited_a, waited_b)


def test_nested_phases_count_each_second_once():
    """An inner phase's seconds are its own, not also its outer phase's: the phases add up to
    the time spent inside the outermost one."""
    from alignsweep.runtime.phase_clock import PhaseClock

    clock = PhaseClock()
    start = time.perf_counter()
    with clock("outer"):
        time.sleep(0.1)
        with clock("inner"):
            time.sleep(0.2)
        with clock("inner"):
            time.sleep(0.1)
        time.sleep(0.1)
    total = time.perf_counter() - start
    assert 0.29 < clock.seconds["inner"] < 0.4 and 0.19 < clock.seconds["outer"] < 0.3, clock.seconds
    assert abs(clock.seconds["inner"] + clock.seconds["outer"] - total) < 0.01
