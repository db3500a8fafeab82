"""What a SLURM job runs: the worker on a prepared run directory, requeued on time limit or
pre-emption and resumed from the run's last trainer checkpoint.

With several tasks (processes) in the allocation, each one learns its rank from SLURM and joins
torch.distributed (gloo on CPU, NCCL on GPU); the worker lets only rank 0 write.
Importing this module imports neither torch nor the worker: it is pickled by the launcher.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any, Optional

import submitit

from alignsweep.results import rundir


def requeue_reason(elapsed_s: float, time_min: Optional[int], signal_delay_s: int) -> str:
    """Why submitit's signal came: the job's time limit (the signal is due `signal_delay_s` before
    it, and SLURM may send it up to a minute early) or pre-emption (any earlier signal)."""
    if time_min is not None and elapsed_s >= time_min * 60 - signal_delay_s - 65:
        return f"time limit ({time_min} min) reached after {elapsed_s / 60:.1f} min"
    return f"pre-empted after {elapsed_s / 60:.1f} min"


class WorkerTask(submitit.helpers.Checkpointable):
    """Callable pickled into every array task. `checkpoint` (called by submitit on its requeue
    signal) records the requeue and its reason in the run's status, then resubmits the task
    unchanged: the worker itself finds the latest checkpoint in the run directory and resumes."""

    def __init__(self, time_min: Optional[int] = None, signal_delay_s: int = 0):
        self.time_min, self.signal_delay_s = time_min, signal_delay_s
        self.started = time.time()

    def __call__(self, run_dir: str) -> str:
        self.started = time.time()
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus:
            os.environ.setdefault("ALIGNSWEEP_THREADS", cpus)
        # by name: this module is pickled by the launcher, which never imports the worker (or torch)
        status = importlib.import_module("alignsweep.worker.job").run_prepared(run_dir)
        if status["state"] != "completed":
            raise RuntimeError(f"run {run_dir} ended {status['state']}: {status.get('error') or status.get('stop_reason')}")
        return status["state"]

    def checkpoint(self, run_dir: str, *args: Any, **kwargs: Any) -> Any:
        status = rundir.read_status(run_dir) or {}
        if status.get("state") != "completed":
            reason = requeue_reason(time.time() - self.started, self.time_min, self.signal_delay_s)
            rundir.write_status(run_dir, state="requeued", phase="requeued", requeue_reason=reason,
                                requeues=status.get("requeues", 0) + 1)
        return super().checkpoint(run_dir, *args, **kwargs)
