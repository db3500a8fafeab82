"""What a SLURM job runs: the worker on a prepared run directory, requeued on time limit or
pre-emption and resumed from the run's last trainer checkpoint.

With several tasks (processes) in the allocation, each one learns its rank from SLURM and joins
torch.distributed (gloo on CPU, NCCL on GPU); the worker lets only rank 0 write.
Importing this module imports neither torch nor the worker: it is pickled by the launcher.
"""

from __future__ import annotations

import importlib
import os

import submitit


class WorkerTask(submitit.helpers.Checkpointable):
    """Callable pickled into every array task. `checkpoint` (inherited) resubmits it unchanged: the
    worker itself finds the latest checkpoint in the run directory and resumes from it."""

    def __call__(self, run_dir: str) -> str:
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
