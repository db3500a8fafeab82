"""Progress of a running sweep in the terminal.

In a terminal: an overall bar (jobs done of all, elapsed time, ETA; `rich.progress`) with one row
per running job beneath it (its phase and steps), and one line above the bar per job event
(started, completed, failed). Elsewhere (a log file, CI, `| tee`): the same events as plain lines,
and at most one line per job every `every_s` seconds while it trains, never a flood. A failure is
printed once, where it happens; the summary counts it and names its log.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from alignsweep.results import rundir


def job_label(job: Any) -> str:
    j = job.job
    extra = "".join(f" {k}={v:g}" for k, v in (("alpha", j.alpha), ("gamma", j.gamma)) if v is not None)
    return f"#{job.num} {j.algo} {j.model} beta={j.beta:g}{extra}"


def describe(status: dict) -> str:
    """A job's phase in words, from its status.json (`sft step 40/200`, `train step 12/32, ...`)."""
    phase = status.get("phase", "starting")
    if phase in ("sft", "train", "eval") and status.get("total_steps" if phase != "sft" else "sft_total_steps"):
        if phase == "sft":
            return f"sft step {status.get('sft_step', 0)}/{status['sft_total_steps']}"
        text = f"{phase} step {status.get('step', 0)}/{status.get('total_steps') or '?'}"
        if status.get("last_win_rate") is not None:
            text += f", win rate {status['last_win_rate']:.2f} after {status.get('checkpoints_done', 0)} evals"
        targets = status.get("sqrt_kl_targets")  # eval.at=sqrt_kl
        if targets:
            crossed = sum(1 for t in targets if t.get("state") in ("reached", "passed"))
            text += f", sqrt(KL) targets {crossed}/{len(targets)} crossed"
        return text
    return phase


class ProgressPrinter:
    """Reports a sweep's jobs: `note` (started / skipped), `tick` (running jobs' status files),
    `finished` (exit code), `summary`, `close`. `console`: a `rich.console.Console` to draw the
    live bar on; None = the process's stdout, live only when it is a terminal."""

    def __init__(self, jobs: Sequence[Any], every_s: float, console: Optional[Any] = None):
        self.jobs = {job.num: job for job in jobs}
        self.every_s = every_s
        self.active: dict[int, Any] = {}
        self.last: dict[int, tuple[float, str]] = {}
        self.done = 0
        self.failed: list[tuple[Any, str]] = []
        self.start = time.time()
        self.live = None
        if console is None and sys.stdout.isatty():
            from rich.console import Console

            console = Console()
        if console is not None and console.is_terminal:
            self._start_live(console)

    def _start_live(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.live = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[phase]}"),
            console=console, transient=False, refresh_per_second=2,
        )
        self.overall = self.live.add_task("sweep", total=len(self.jobs), phase="")
        self.rows: dict[int, Any] = {}
        self.live.start()

    def _print(self, text: str) -> None:
        line = f"[{self.done:>3}/{len(self.jobs)} done] {text}"
        if self.live is not None:
            self.live.console.print(line, markup=False, highlight=False)
        else:
            print(line, flush=True)

    def note(self, job: Any, what: str) -> None:
        if what.startswith("already"):
            self.done += 1
            if self.live is not None:
                self.live.update(self.overall, completed=self.done)
        elif what.startswith("not started"):
            pass
        else:
            self.active[job.num] = job
            if self.live is not None:
                self.rows[job.num] = self.live.add_task(f"  {job_label(job)}", total=None, phase="starting")
        self._print(f"{job_label(job)}: {what}")

    def tick(self) -> None:
        now = time.time()
        for num, job in self.active.items():
            status = rundir.read_status(job.run_dir) or {}
            text = describe(status)
            if self.live is not None:
                steps = (status.get("sft_step"), status.get("sft_total_steps")) if status.get("phase") == "sft" else (
                    status.get("step"), status.get("total_steps"))
                self.live.update(self.rows[num], completed=steps[0] or 0, total=steps[1], phase=text)
                continue
            when, previous = self.last.get(num, (0.0, ""))
            if text in ("queued", "setup", "starting"):
                continue
            if text != previous and now - when >= self.every_s:
                self.last[num] = (now, text)
                self._print(f"{job_label(job)}: {text}")

    def finished(self, job: Any, code: int) -> None:
        self.active.pop(job.num, None)
        self.done += 1
        if self.live is not None:
            self.live.remove_task(self.rows.pop(job.num))
            self.live.update(self.overall, completed=self.done)
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

    def close(self) -> None:
        """Stop the live display (the bar stays on screen as it last was)."""
        if self.live is not None:
            self.live.stop()
            self.live = None

    def summary(self, busy: int = 0) -> None:
        self.close()
        minutes = (time.time() - self.start) / 60
        print(
            f"[alignsweep] {self.done - len(self.failed)} of {len(self.jobs)} jobs completed, "
            f"{len(self.failed)} failed or interrupted"
            + (f", {busy} running in another process" if busy else "") + f", in {minutes:.1f} min",
            flush=True,
        )
        if self.failed:  # each error was printed when its job ended; here only where to look
            print("  FAILED (error above): " + ", ".join(
                f"#{job.num} (log: {job.run_dir / rundir.LOG})" for job, _ in self.failed), flush=True)


def resume_command(directory: Path, key: str = "hydra.sweep.dir") -> str:
    """The command line that resumes this launch: this process's arguments, with `key` (the sweep
    or run directory) set to `directory`, absolute, so a `${now:...}` default cannot start a new one."""
    import shlex
    import sys

    args = [a for a in sys.argv[1:] if not a.lstrip("+").startswith(f"{key}=")]
    return shlex.join(["python", "-m", "alignsweep", *args, f"{key}={Path(directory).absolute()}"])
