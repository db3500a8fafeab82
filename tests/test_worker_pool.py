"""The local launcher's workers, forked from a server that imported torch/TRL once
(`alignsweep.launch.local_pool`): the same job, the same rows, exit codes and signals as a fresh
`python -m alignsweep.worker` process."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import yaml

from alignsweep.results import rundir
from alignsweep.config.run_config import write_run_config
from alignsweep.launch.local_pool import WorkerPool, wait_any

ENV = {"ALIGNSWEEP_THREADS": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "WANDB_MODE": "offline"}


def _prepare(run_dir: Path, cache: Path, *overrides: str) -> Path:
    from tests.test_config import compose_cfg

    cfg = compose_cfg(
        f"paths.cache_dir={cache}", "logger=none", "data.embedded.n_train=64", "eval.prompts=32",
        "train.checkpoints=1", *overrides,
    )
    run_dir.mkdir(parents=True)
    write_run_config(run_dir, cfg)
    return run_dir


def _finish(job, timeout: float = 600) -> int:
    deadline = time.time() + timeout
    while (code := job.poll()) is None:
        assert time.time() < deadline, "the job did not end"
        wait_any([job], timeout=0.5)
    return code


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.mark.slow
def test_a_forked_job_writes_the_rows_of_a_fresh_interpreter(tmp_path, sft_cache):
    forked_pool, fresh_pool = WorkerPool(ENV, fork=True), WorkerPool(ENV, fork=False)
    assert forked_pool.forked and not fresh_pool.forked
    forked = _prepare(tmp_path / "forked", sft_cache, "algo=ipo")
    fresh = _prepare(tmp_path / "fresh", sft_cache, "algo=ipo")
    job = forked_pool.start(forked, forked / rundir.LOG)
    assert _parent(job.pid) != __import__("os").getpid()  # forked by the server, not started by us
    assert _finish(job) == 0
    assert _finish(fresh_pool.start(fresh, fresh / rundir.LOG)) == 0
    rows = rundir.read_metrics(forked)
    assert len(rows) == 2 and rows == rundir.read_metrics(fresh)
    assert "evaluated step 0" in (forked / rundir.LOG).read_text()  # its output went to its own log
    assert rundir.read_status(forked)["pid"] == job.pid


@pytest.mark.parametrize("fork", [True, False])
def test_exit_codes_and_signals_reach_the_launcher(tmp_path, sft_cache, fork):
    pool = WorkerPool(ENV, fork=fork)
    # a user mistake the worker reports: exit 2, one line in the job's log
    bad = _prepare(tmp_path / "bad", sft_cache)
    config = yaml.safe_load((bad / rundir.CONFIG).read_text())
    config["alpha"] = 0.5  # DPO has no alpha
    (bad / rundir.CONFIG).write_text(yaml.safe_dump(config))
    assert _finish(pool.start(bad, bad / rundir.LOG)) == 2
    assert "error:" in (bad / rundir.LOG).read_text() and "alpha" in (bad / rundir.LOG).read_text()
    # a job stopped by SIGTERM records itself as interrupted and exits 128 + SIGTERM, the shell's
    # convention (issue 18: interrupted, not failed); the launcher sees that code either way
    stopped = _prepare(tmp_path / "stopped", sft_cache)
    job = pool.start(stopped, stopped / rundir.LOG)
    deadline = time.time() + 120  # once the worker runs (a fresh interpreter is still importing torch at 0.5 s)
    while time.time() < deadline and (rundir.read_status(stopped) or {}).get("state") != "running":
        time.sleep(0.1)
    job.terminate()
    assert _finish(job) == 128 + signal.SIGTERM
    assert (rundir.read_status(stopped) or {}).get("state") in (None, "interrupted")
