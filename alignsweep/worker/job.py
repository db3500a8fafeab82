"""The worker: one job, a pure function of its resolved config, writing only to its run directory.

`python -m alignsweep.worker RUN_DIR` runs the job a launcher prepared in RUN_DIR (its config.yaml):
it resumes from the run's newest trainer checkpoint if there is one, records its state in
status.json, and runs the job's task (`alignsweep.worker.kinds`: the preference task, or the Tree
MDP toy). While it runs it holds the run directory's lock (`rundir.hold_lock`): a second worker on
the same directory is refused, and a run whose process is gone shows as `interrupted`.

Exit codes: 0 the job completed; 1 it failed or diverged; 2 a user mistake; 3 another live process
runs this job; 130 interrupted (Ctrl-C, SIGINT) and 143 terminated (SIGTERM), recorded as
`interrupted` and resumable.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alignsweep.cli_style import tool_parser
from alignsweep.config.resolve import resolve_job
from alignsweep.errors import ConfigError
from alignsweep.results import rundir
from alignsweep.runtime.distributed import rank
from alignsweep.worker.kinds import task_runner

log = logging.getLogger("alignsweep.worker")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the job is, so it ends as a Ctrl-C does: recorded as interrupted."""


def stop_on_sigterm() -> None:
    """Turn SIGTERM into `Terminated` in this process (local jobs and single runs; a SLURM task
    leaves SIGTERM to submitit, which requeues on its own signal)."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise Terminated("SIGTERM")

    signal.signal(signal.SIGTERM, handler)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and evaluate one job; returns its final status.

    In a distributed job every rank trains; only rank 0 writes the run directory's status, metrics
    and wandb run, and evaluates (with a sharded model every rank takes part: alignsweep.train.sharding).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # TRL 1.16 itself reads transformers' deprecated `is_gradient_checkpointing` (trl.models.utils):
    # nothing a user can change; every warning about how *we* pass arguments stays visible
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    job = resolve_job(cfg)
    main = rank() == 0
    lock = rundir.hold_lock(run_dir) if main else None  # RunInUse: another live process runs it
    try:
        return _run_locked(cfg, run_dir, job, main)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(cfg: DictConfig, run_dir: Path, job: Any, main: bool) -> dict:
    start = time.time()
    previous = rundir.read_status(run_dir) or {}
    if previous.get("state") == "completed":
        # e.g. requeued by the scheduler in the seconds after it finished: nothing is left to do
        log.info("run %s already completed; nothing to do", run_dir)
        return previous
    resume_from = latest_checkpoint(run_dir)
    if main:
        prepare_resume(run_dir, resume_from)
        attempt = (rundir.read_status(run_dir) or {}).get("attempt", 0) + 1
        rundir.write_status(
            run_dir, state="running", phase="setup", error=None, pid=os.getpid(), attempt=attempt,
            resumed_from=None if resume_from is None else resume_from.name,
        )
    tracker = None
    try:
        tracker = _build_tracker(cfg, run_dir, job) if main else _null_tracker()
        status = task_runner(cfg)(cfg, job, run_dir, tracker, resume_from)
        if main:
            status = rundir.write_status(run_dir, wall_s=time.time() - start, **status)
        tracker.finish(0)
        return status
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (Terminated): resumable, not a failure
        _ignore_further_signals()  # a second signal (the launcher's SIGTERM after a Ctrl-C) must not cut this short
        how = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C (SIGINT)"
        if main:
            rundir.write_status(run_dir, state="interrupted", phase="interrupted", error=f"interrupted by {how}")
        if tracker is not None:
            tracker.finish(1)
        raise
    except BaseException as exc:
        now = rundir.read_status(run_dir) or {}
        if isinstance(exc, SystemExit) and now.get("state") == "requeued":
            pass  # submitit requeues the job (time limit / pre-emption); WorkerTask.checkpoint recorded why
        elif main:
            rundir.write_status(
                run_dir, state="failed", phase="failed", error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            )
        if tracker is not None:
            tracker.finish(1)
        raise


def _ignore_further_signals() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _null_tracker():
    from alignsweep.results.tracking import NullTracker

    return NullTracker()


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete trainer checkpoint of the run (Trainer writes trainer_state.json last)."""
    found = []
    for path in (Path(run_dir) / "trainer").glob("checkpoint-*"):
        if (path / "trainer_state.json").exists() and path.name.split("-")[-1].isdigit():
            found.append((int(path.name.split("-")[-1]), path))
    return max(found)[1] if found else None


def prepare_resume(run_dir: Path, checkpoint: Path | None) -> None:
    """Make the run directory consistent with the checkpoint the next attempt resumes from.

    Metric rows after the checkpoint's step are dropped: training from the checkpoint recomputes
    them (deterministically), so a resumed run ends with exactly the rows of an uninterrupted one.
    Without a checkpoint the run starts over and earlier rows are set aside, not mixed in.
    """
    rows = rundir.read_metrics(run_dir, problems=[])  # unreadable lines are dropped with the rewrite
    if checkpoint is None:
        if (run_dir / rundir.METRICS).exists():
            os.replace(run_dir / rundir.METRICS, run_dir / f"{rundir.METRICS}.previous")
        return
    step = int(checkpoint.name.split("-")[-1])
    rundir.rewrite_metrics(run_dir, [r for r in rows if r["step"] <= step])


def _build_tracker(cfg: Any, run_dir: Path, job: Any):
    from alignsweep.results.tracking import build_tracker, dashboard_config, dashboard_group, dashboard_tags, sweep_of

    experiment, group = dashboard_group(sweep_of(run_dir))
    return build_tracker(
        cfg.logger,
        run_dir,
        group=group,
        job_type=job.algo,
        name=f"{job.algo}-{job.model}-b{job.beta:g}" + (f"-a{job.alpha:g}" if job.alpha is not None else "")
        + (f"-g{job.gamma:g}" if job.gamma is not None else ""),
        config=dashboard_config(OmegaConf.to_container(cfg, resolve=True)),
        tags=dashboard_tags(algo=job.algo, model=job.model, data=cfg.data.name, judge=cfg.judge.name,
                            experiment=experiment),
        replay=rundir.read_metrics(run_dir, problems=[]),
    )


def load_config(path: Path) -> DictConfig:
    from alignsweep.config.schema import load_run_config

    return load_run_config(path)


def run_prepared(run_dir: str | Path) -> dict:
    """Run the job prepared in `run_dir` (its config.yaml written by a launcher)."""
    run_dir = Path(run_dir)
    threads = os.environ.get("ALIGNSWEEP_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return run(load_config(run_dir / rundir.CONFIG), run_dir)


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("python -m alignsweep.worker", __doc__)
    parser.add_argument("run_dir", type=Path, help="a run directory a launcher prepared (holds config.yaml)")
    run_dir = parser.parse_args(argv).run_dir
    config = run_dir / rundir.CONFIG
    if not config.exists():
        print(f"error: {config} does not exist: not a prepared run directory", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stop_on_sigterm()
    try:
        status = run_prepared(run_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except rundir.RunInUse as exc:
        print(f"error: {exc}; not started", file=sys.stderr)
        return 3
    except KeyboardInterrupt as exc:
        print(f"interrupted ({'SIGTERM' if isinstance(exc, Terminated) else 'Ctrl-C'}); the next launch resumes it",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    return 0 if status["state"] == "completed" else 1
