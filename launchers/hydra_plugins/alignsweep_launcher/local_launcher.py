"""Hydra launcher: the jobs of a multirun as parallel local worker processes.

Every job is composed and validated before any starts (a typo in the 9th job stops the sweep
before the 1st trains). Each job gets a run directory holding its resolved config, then a worker
process, forked from a server that imported torch, transformers and TRL once (`fork_workers`,
`alignsweep.launch.local_pool`) or a fresh `python -m alignsweep.worker RUN_DIR`; at most
`max_parallel` run at once. Progress is read
from the run directories' status files and printed as one line per change, at most every
`progress_every_s` per job. When the jobs end, the sweep is collected (table + plot).

This module imports no torch: it only composes configs and starts processes.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher

from alignsweep.launch.composer import SweepLauncher, job_return

log = logging.getLogger(__name__)


class LocalProcessLauncher(SweepLauncher, Launcher):
    def __init__(
        self,
        max_parallel: Optional[int] = None,
        threads_per_job: Optional[int] = None,
        progress_every_s: float = 10.0,
        collect: bool = True,
        fork_workers: bool = True,
    ) -> None:
        cores = os.cpu_count() or 1
        self.max_parallel = max(1, max_parallel or cores)
        self.threads_per_job = threads_per_job or max(1, cores // self.max_parallel)
        self.progress_every_s = progress_every_s
        self.collect = collect
        self.fork_workers = fork_workers
        self.pool: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if not config.dry_run:
            # the fork server imports torch/TRL while the jobs are composed
            self._worker_pool()

    def _worker_pool(self) -> Any:
        if self.pool is None:
            from alignsweep.launch.local_pool import WorkerPool

            env = {"ALIGNSWEEP_THREADS": str(self.threads_per_job), "OMP_NUM_THREADS": str(self.threads_per_job)}
            env["TQDM_DISABLE"] = os.environ.get("TQDM_DISABLE", "1")
            self.pool = WorkerPool(env, fork=self.fork_workers)
        return self.pool

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        jobs, sweep_dir = self.prepare(job_overrides, initial_job_idx)
        if self.config.dry_run:
            return self.dry_run(jobs)
        print(
            f"[alignsweep] {len(jobs)} jobs, {self.max_parallel} at a time, {self.threads_per_job} thread(s) each; "
            f"sweep directory: {sweep_dir}",
            flush=True,
        )
        from alignsweep.launch.composer import write_manifest

        write_manifest(sweep_dir, jobs, launcher="local")
        returns = self._run_all(jobs)
        if self.collect:
            from alignsweep.analysis.summarize import collect_and_report

            collect_and_report(sweep_dir)
        return returns

    def _run_all(self, jobs: list) -> list[JobReturn]:
        from alignsweep.launch.local_pool import wait_any
        from alignsweep.launch.progress import ProgressPrinter
        from alignsweep.results import rundir

        pending = list(jobs)
        pool = self._worker_pool()
        running: dict[int, tuple[Any, Any]] = {}
        codes: dict[int, int] = {}
        printer = ProgressPrinter(jobs, every_s=self.progress_every_s)
        try:
            while pending or running:
                while pending and len(running) < self.max_parallel:
                    job = pending.pop(0)
                    if job.skip:
                        codes[job.num] = 0
                        printer.note(job, "already completed, skipped")
                        continue
                    running[job.num] = (job, pool.start(job.run_dir, job.run_dir / rundir.LOG))
                    printer.note(job, "started")
                wait_any([proc for _, proc in running.values()], timeout=0.5)
                for num, (job, proc) in list(running.items()):
                    code = proc.poll()
                    if code is not None:
                        codes[num] = code
                        del running[num]
                        printer.finished(job, code)
                printer.tick()
        except KeyboardInterrupt:
            printer.close()
            for job, proc in running.values():
                proc.terminate()
            raise
        printer.summary()
        return [job_return(job, codes.get(job.num, 1)) for job in jobs]


__all__ = ["LocalProcessLauncher"]
