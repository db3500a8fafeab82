"""Step 0 is measured once per sweep (`eval.share_step0`): a job that reads the shared measurement
writes exactly the step-0 row it would have computed itself, its loss-specific metrics included."""

from __future__ import annotations

import math

import pytest

from alignsweep.results import rundir

pytestmark = pytest.mark.slow

SMALL = ["data.embedded.n_train=64", "eval.prompts=48", "logger=none", "train.checkpoints=1"]


def _run(cli, name: str, *args: str) -> tuple[dict, dict]:
    # the session's SFT cache: the SFT model is built once; step-0 files are keyed by seed and data
    cli(*args, *SMALL, f"hydra.run.dir={cli.cwd / name}")
    return rundir.read_metrics(cli.cwd / name)[0], rundir.read_status(cli.cwd / name)


def test_a_job_reading_the_shared_step0_writes_the_row_it_would_have_computed_and_another_seed_does_not_share_it(cli):
    alone, status = _run(cli, "alone", "algo=simpo", "eval.share_step0=false")
    assert "step0_eval" not in status
    _, first = _run(cli, "first", "algo=dpo", "beta=0.1")
    assert first["step0_eval"] == "measured"
    shared, second = _run(cli, "second", "algo=simpo")
    assert second["step0_eval"] == "read from the sweep's cache"
    # a different seed does not share step 0 (seed 0's measurement is in the cache now)
    _, other = _run(cli, "other", "algo=dpo", "seed=3")
    assert other["step0_eval"] == "measured"
    assert shared["step"] == alone["step"] == 0
    assert set(shared) == set(alone)
    for key, value in alone.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(shared[key]), key
        else:
            assert shared[key] == pytest.approx(value, abs=1e-9), key
    # SimPO's own implicit reward decides its step-0 reward accuracy (DPO's is 0.5 there: every pair a tie)
    assert shared["reward_accuracy"] > 0


def _start_while_step0_is_busy(cli, sft_cache, step0_file, name: str, *args: str):
    """Start a job while (as far as it can tell) another job is measuring step 0: the step-0 file
    is not there and its lock is held, here. Returns (process, run dir, lock) once the job has left
    step 0 for later and trains."""
    import time

    from filelock import FileLock

    from alignsweep.cache.store import lock_path

    step0_file.unlink()
    lock = FileLock(str(lock_path(step0_file)))
    lock.acquire()
    run = cli.cwd / name
    # its output goes to a file: a pipe nobody reads would fill up and stop it
    proc = cli.popen(*args, *SMALL, f"hydra.run.dir={run}", f"paths.cache_dir={sft_cache}", stdout=run.with_suffix(".out"))
    deadline = time.time() + 300
    while "left for later" not in (rundir.read_status(run) or {}).get("step0_eval", ""):
        assert proc.poll() is None and time.time() < deadline, run.with_suffix(".out").read_text()
        time.sleep(0.2)
    return proc, run, lock


def test_a_job_trains_while_another_measures_step0_and_writes_the_same_rows(cli, sft_cache):
    """A job that finds another job measuring step 0 trains instead of waiting, and reads the
    measurement before its next row: its rows are exactly those of a job that read it at once.
    If the other job never stores it, the job measures step 0 itself with the SFT (reference)
    model, and again writes the same rows."""
    import os
    import time

    _, first = _run(cli, "first", "algo=dpo", "seed=5")
    assert first["step0_eval"] == "measured"
    step0_file = max((sft_cache / "step0").glob("*.pt"), key=os.path.getmtime)
    saved = step0_file.read_bytes()

    proc, later, lock = _start_while_step0_is_busy(cli, sft_cache, step0_file, "later", "algo=ipo", "seed=5")
    deadline = time.time() + 300
    while (rundir.read_status(later) or {}).get("phase") != "eval":  # at its next row, waiting for step 0's
        assert proc.poll() is None and time.time() < deadline, (cli.cwd / "later.out").read_text()
        time.sleep(0.2)
    status = rundir.read_status(later)
    assert status["step"] == status["total_steps"] > 0  # training's step, not the step-0 row's
    tmp = step0_file.with_name(".tmp-step0")
    tmp.write_bytes(saved)
    os.replace(tmp, step0_file)  # the other job stores its measurement, then lets go of the lock
    lock.release()
    assert proc.wait(timeout=300) == 0, (cli.cwd / "later.out").read_text()

    proc, measured, lock = _start_while_step0_is_busy(cli, sft_cache, step0_file, "measured", "algo=ipo", "seed=5")
    lock.release()  # the other job failed: nothing stored
    assert proc.wait(timeout=300) == 0, (cli.cwd / "measured.out").read_text()

    rows = {}
    for name in ("later", "measured", "direct"):
        if name == "direct":
            _run(cli, name, "algo=ipo", "seed=5")
        rows[name] = rundir.read_metrics(cli.cwd / name)
    status = {name: rundir.read_status(cli.cwd / name) for name in rows}
    assert status["direct"]["step0_eval"] == "read from the sweep's cache"
    assert status["later"]["step0_eval"] == "read from the sweep's cache after training began (another job was measuring it)"
    assert status["measured"]["step0_eval"] == "measured after training began (another job was measuring it)"
    assert status["later"]["waited_s"] > 0  # its next row waited for the file (the lock held here)
    steps = [r["step"] for r in rows["direct"]]
    assert len(steps) == 2 and steps[0] == 0
    for name in ("later", "measured"):
        assert [r["step"] for r in rows[name]] == steps  # step 0's row first
        for direct, row in zip(rows["direct"], rows[name]):
            assert set(row) == set(direct)
            for key, value in direct.items():
                assert (math.isnan(row[key]) and math.isnan(value)) if isinstance(value, float) and math.isnan(value) \
                    else row[key] == value, (name, row["step"], key)
