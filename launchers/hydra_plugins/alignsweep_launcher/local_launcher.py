"""Hydra launcher: the jobs of a multirun as parallel local worker processes.

Every job is composed and validated before any starts (a typo in the 9th job stops the sweep
before the 1st trains). Each job gets a run directory holding its resolved config, then a worker
process, forked from a server that imported torch, transformers and TRL once (`fork_workers`,
`alignsweep.launch.local_pool`) or a fresh `python -m alignsweep.worker RUN_DIR`; at most
`max_parallel` run at once. Progress is read
from the run directories' status files and printed as one line per change, at most every
`progress_every_s` per job. When the jobs end, the sweep is collected (table + plot).

Exit codes (README, "Exit codes"): 0 every job completed; 1 a job failed, diverged or was
interrupted; 2 nothing started (a mistake in the config or the launcher's settings); 3 some jobs
run in another live process (their run directories' locks are held) and were left to it; 130 the
launch was interrupted (Ctrl-C; 143 for SIGTERM): the jobs are stopped, recorded as `interrupted`,
and one line says the command that resumes them.

This module imports no torch: it only composes configs and starts processes.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher

from alignsweep.launch.composer import SweepLauncher, job_return

log = logging.getLogger(__name__)


class LauncherInterrupted(KeyboardInterrupt):
    """SIGTERM to the launcher: stop the jobs as for Ctrl-C."""


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
        self.settings = {"max_parallel": max_parallel, "threads_per_job": threads_per_job,
                         "progress_every_s": progress_every_s}
        self.max_parallel = max(1, max_parallel or cores)
        self.threads_per_job = max(1, threads_per_job or max(1, cores // self.max_parallel))
        self.progress_every_s = progress_every_s
        self.collect = collect
        self.fork_workers = fork_workers
        self.pool: Any = None

    def setting_errors(self) -> list[str]:
        """Settings that cannot work, each as `key: what is wrong` (refused before anything starts)."""
        errors = []
        for key in ("max_parallel", "threads_per_job"):
            value = self.settings[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                errors.append(f"hydra.launcher.{key}: must be an integer >= 1 or null, got {value!r}")
        every = self.settings["progress_every_s"]
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 <= every < float("inf"):
            errors.append(f"hydra.launcher.progress_every_s: must be a number of seconds >= 0, got {every!r}")
        return errors

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        errors = self.setting_errors()
        if errors:
            print("error: the sweep was not started:\n  " + "\n  ".join(errors), file=sys.stderr)
            sys.exit(2)
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
        try:
            jobs, sweep_dir = self.prepare(job_overrides, initial_job_idx)
        except BaseException:  # refused (exit 2) or interrupted before any job started
            if self.pool is not None:
                self.pool.close()
            raise
        if self.config.dry_run:
            return self.dry_run(jobs)
        print(
            f"[alignsweep] {len(jobs)} jobs, {self.max_parallel} at a time, {self.threads_per_job} thread(s) each; "
            f"sweep directory: {sweep_dir}",
            flush=True,
        )
        from alignsweep.launch.composer import write_manifest
        from alignsweep.launch.progress import resume_command

        write_manifest(sweep_dir, jobs, launcher="local")
        import signal

        def on_sigterm(signum: int, frame: Any) -> None:
            raise LauncherInterrupted("SIGTERM")

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            returns, codes = self._run_all(jobs)
        except KeyboardInterrupt as exc:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if getattr(self, "printer", None) is not None:
                self.printer.close()  # the live bar, if any, ends before the message
            stopped = self._stop_running()
            how = "SIGTERM" if isinstance(exc, LauncherInterrupted) else "Ctrl-C"
            print(f"\n[alignsweep] interrupted ({how}): {stopped} running job(s) stopped and recorded as interrupted; "
                  f"resume with: {resume_command(sweep_dir)}", file=sys.stderr, flush=True)
            sys.exit(143 if isinstance(exc, LauncherInterrupted) else 130)
        finally:
            signal.signal(signal.SIGTERM, previous)
        if self.collect:
            from alignsweep.analysis.summarize import collect_and_report

            collect_and_report(sweep_dir)
        code = exit_code(jobs, codes)
        if code:
            print(f"[alignsweep] exit code {code}: not every job completed; "
                  f"`python -m alignsweep status {sweep_dir}` says which; resume with: {resume_command(sweep_dir)}",
                  file=sys.stderr, flush=True)
            sys.exit(code)
        return returns

    def _run_all(self, jobs: list) -> tuple[list[JobReturn], dict]:
        from alignsweep.launch.local_pool import wait_any
        from alignsweep.launch.progress import ProgressPrinter
        from alignsweep.results import rundir

        pending = list(jobs)
        pool = self._worker_pool()
        self.running: dict[int, tuple[Any, Any]] = {}
        running = self.running
        codes: dict[int, Any] = {}
        printer = self.printer = ProgressPrinter(jobs, every_s=self.progress_every_s)
        while pending or running:
            while pending and len(running) < self.max_parallel:
                job = pending.pop(0)
                if job.skip:
                    codes[job.num] = 0
                    printer.note(job, "already completed, skipped")
                    continue
                if job.busy or rundir.lock_held(job.run_dir):
                    codes[job.num] = "busy"
                    printer.note(job, f"not started: {job.busy or 'running in another process'}")
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
        printer.summary(busy=sum(1 for c in codes.values() if c == "busy"))
        return [job_return(job, codes.get(job.num, 1)) for job in jobs], codes

    def _stop_running(self, grace_s: float = 30.0) -> int:
        """Stop the running jobs: each gets SIGTERM (unless a Ctrl-C at the terminal reached it
        already) and `grace_s` to record itself as interrupted, then SIGKILL."""
        import time

        running = list(getattr(self, "running", {}).values())
        deadline = time.time() + 2.0  # a terminal's Ctrl-C reached the jobs too: let them end on their own
        while time.time() < deadline and any(proc.poll() is None for _, proc in running):
            time.sleep(0.05)
        for _, proc in running:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.time() + grace_s
        while time.time() < deadline and any(proc.poll() is None for _, proc in running):
            time.sleep(0.05)
        from alignsweep.results import rundir

        for job, proc in running:
            if proc.poll() is None:
                proc.kill()
            state = (rundir.read_status(job.run_dir) or {}).get("state")
            if state not in rundir.FINAL_STATES + ("interrupted",):
                rundir.write_status(job.run_dir, state="interrupted", phase="interrupted",
                                    error="stopped with its launcher")
        return len(running)


def exit_code(jobs: Sequence[Any], codes: dict) -> int:
    """The launch's exit code from its jobs' outcomes (see the module's docstring)."""
    from alignsweep.results import rundir

    states = [(rundir.read_status(job.run_dir) or {}).get("state") for job in jobs if codes.get(job.num) != "busy"]
    if any(state != "completed" for state in states):
        return 1
    return 3 if any(c == "busy" for c in codes.values()) else 0


__all__ = ["LocalProcessLauncher"]
