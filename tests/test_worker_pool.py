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


GATE_SITE = '''import os, sys, time
if "multiprocessing.forkserver" in " ".join(getattr(sys, "orig_argv", [])):  # the fork server only
    while not os.path.exists(os.environ["ALIGNSWEEP_TEST_GATE"]):
        time.sleep(0.05)
'''


def test_a_refused_sweep_ends_its_output_pipe_when_it_exits(tmp_path, cli):
    """Observed: `python -m alignsweep -m ... | cat` with a refused job printed the refusal and
    exited 2, but the pipe stayed open ~30 s more: the fork server, started while the jobs were
    composed, held it while importing torch. Here the fork server is held at its start (a
    sitecustomize waits on a gate file) for as long as the test wants, so a server that holds the
    pipe keeps it open for certain, not just for the length of an import."""
    import os
    import threading

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GATE_SITE)
    gate = tmp_path / "gate"
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "ALIGNSWEEP_TEST_GATE": str(gate)}
    proc = cli.popen("-m", "train.lr=1e-4,-1", "logger=none", "hydra.sweep.dir=sweep", env=env)
    try:
        code = proc.wait(timeout=300)
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
        reader.start()
        reader.join(timeout=60)  # the launcher has exited: nobody else may hold the pipe
        assert not reader.is_alive(), "the pipe stayed open after the launcher exited (the fork server holds it)"
        assert code == 2 and "train.lr" in out[0] and "Traceback" not in out[0], (code, out)
    finally:
        gate.write_text("")  # let a held server go on (and end: its launcher is gone)
        if proc.poll() is None:
            proc.kill()
