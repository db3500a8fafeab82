"""Progress of a running sweep in the terminal: one line per job event, never a flood."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from alignsweep.results import rundir


def job_label(job: Any) -> str:
    j = job.job
    extra = "".join(f" {k}={v:g}" for k, v in (("alpha", j.alpha), ("gamma", j.gamma)) if v is not None)
    return f"#{job.num} {j.algo} {j.model} beta={j.beta:g}{extra}"


class ProgressPrinter:
    def __init__(self, jobs: Sequence[Any], every_s: float):
        self.jobs = {job.num: job for job in jobs}
        self.every_s = every_s
        self.active: dict[int, Any] = {}
        self.last: dict[int, tuple[float, str]] = {}
        self.done = 0
        self.failed: list[tuple[Any, str]] = []
        self.start = time.time()

    def _print(self, text: str) -> None:
        print(f"[{self.done:>3}/{len(self.jobs)} done] {text}", flush=True)

    def note(self, job: Any, what: str) -> None:
        if what.startswith("already"):
            self.done += 1
        elif what.startswith("not started"):
            pass
        else:
            self.active[job.num] = job
        self._print(f"{job_label(job)}: {what}")

    def tick(self) -> None:
        now = time.time()
        for num, job in self.active.items():
            status = rundir.read_status(job.run_dir) or {}
            text = self._describe(status)
            when, previous = self.last.get(num, (0.0, ""))
            if text in ("queued", "setup", "starting"):
                continue
            if text != previous and now - when >= self.every_s:
                self.last[num] = (now, text)
                self._print(f"{job_label(job)}: {text}")

    @staticmethod
    def _describe(status: dict) -> str:
        phase = status.get("phase", "starting")
        if phase in ("train", "eval"):
            text = f"{phase} step {status.get('step', 0)}/{status.get('total_steps') or '?'}"
            if status.get("last_win_rate") is not None:
                text += f", win rate {status['last_win_rate']:.2f} after {status.get('checkpoints_done', 0)} evals"
            return text
        return phase

    def finished(self, job: Any, code: int) -> None:
        self.active.pop(job.num, None)
        self.done += 1
        status = rundir.read_status(job.run_dir) or {}
        state = status.get("state", "failed" if code else "completed")
        if code != 0 and state not in rundir.FINAL_STATES + ("interrupted", "requeued"):
            # the worker died without a word (SIGKILL, out of memory): resumable, like an interruption
            import signal

            how = f"signal {signal.Signals(-code).name}" if code < 0 and -code in signal.Signals._value2member_map_ \
                else f"exit code {code}"
            status = rundir.write_status(job.run_dir, state="interrupted", phase="interrupted",
                                         error=f"the worker ended by {how} before it recorded an outcome")
            state = "interrupted"
        if state == "completed":
            wall = status.get("wall_s")
            self._print(f"{job_label(job)}: completed" + (f" in {wall:.0f}s" if wall else ""))
        else:
            error = status.get("error") or f"worker exited with code {code}"
            self.failed.append((job, error))
            self._print(f"{job_label(job)}: {state.upper()}: {error} (log: {job.run_dir / rundir.LOG})")

    def summary(self, busy: int = 0) -> None:
        minutes = (time.time() - self.start) / 60
        print(
            f"[alignsweep] {self.done - len(self.failed)} of {len(self.jobs)} jobs completed, "
            f"{len(self.failed)} failed or interrupted"
            + (f", {busy} running in another process" if busy else "") + f", in {minutes:.1f} min",
            flush=True,
        )
        for job, error in self.failed:
            print(f"  FAILED {job_label(job)}: {error}\n    log: {job.run_dir / rundir.LOG}", flush=True)


def resume_command(directory: Path, key: str = "hydra.sweep.dir") -> str:
    """The command line that resumes this launch: this process's arguments, with `key` (the sweep
    or run directory) set to `directory`, absolute, so a `${now:...}` default cannot start a new one."""
    import shlex
    import sys

    args = [a for a in sys.argv[1:] if not a.lstrip("+").startswith(f"{key}=")]
    return shlex.join(["python", "-m", "alignsweep", *args, f"{key}={Path(directory).absolute()}"])
