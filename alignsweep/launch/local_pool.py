"""Local worker processes: forked from a warm server, or fresh interpreters.

A fresh `python -m alignsweep.worker RUN_DIR` spends seconds importing torch, transformers and
TRL before it does anything, and every job of a sweep pays that again. With `fork=True` the
jobs are forked from a `multiprocessing` fork server that imported them once
(`alignsweep.worker.preload`): each job is still its own process, with its own run directory,
log, exit code and memory, and starts from the same clean state (the server runs nothing), but
starts in milliseconds. Where a fork server is not available the fresh interpreter is used.

This module imports no torch (the launcher imports it).
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)
# The launcher starts the worker as a program, by module name, like `python -m alignsweep.worker`:
# it never imports the worker (or torch) itself; only the fork server and its children do.
WORKER = "alignsweep.worker"
PRELOAD = [f"{WORKER}.preload"]


def die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent ends (the fork server ends with the launcher),
    so a launcher killed outright leaves no job running unwatched; each records `interrupted`."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass


def run_forked(run_dir: str, log_path: str, env: dict) -> None:
    """The forked job: environment, output into the run's log, then the worker (its exit code)."""
    die_with_parent()
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.argv = [sys.executable, "-m", WORKER, run_dir]
    code = importlib.import_module(f"{WORKER}.job").main([run_dir])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


class Job:
    """One running job: `poll()` (None while running, else the exit code, negative for a
    signal), `terminate()`, and `sentinel` (waitable with multiprocessing.connection.wait; None
    for a fresh interpreter)."""

    def __init__(self, process: object, sentinel: Optional[int], logf: object = None):
        self.process, self.sentinel, self._logf = process, sentinel, logf

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> Optional[int]:
        if isinstance(self.process, subprocess.Popen):
            code = self.process.poll()
        else:
            code = None if self.process.is_alive() else self.process.exitcode
        if code is not None and self._logf is not None:
            self._logf.close()
            self._logf = None
        return code

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()


class WorkerPool:
    """Starts jobs with `start(run_dir, log_path)`, all with the environment `env` added."""

    def __init__(self, env: dict, fork: bool = True):
        self.env = dict(env)
        self.context = None
        if fork:
            import multiprocessing

            try:
                self.context = multiprocessing.get_context("forkserver")
            except ValueError:  # a platform without fork
                log.warning("no fork server on this platform: every job starts a fresh interpreter")
        if self.context is not None:
            self.context.set_forkserver_preload(PRELOAD)
            self._start_server()

    @property
    def forked(self) -> bool:
        return self.context is not None

    def _start_server(self) -> None:
        """Start the server with the jobs' environment, which the libraries read when imported
        (threads, progress bars), and with its output detached (/dev/null: each job writes its
        own log), so that it never holds the launcher's stdout/stderr: a launch that ends while the
        server still imports torch (a refused sweep, `... | cat`) ends its pipe when it exits."""
        from multiprocessing import forkserver

        saved = dict(os.environ)
        os.environ.update(self.env)
        sys.stdout.flush()
        sys.stderr.flush()
        kept = [os.dup(1), os.dup(2)]
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 1)
            os.dup2(null, 2)
            forkserver.ensure_running()
        finally:
            os.dup2(kept[0], 1)
            os.dup2(kept[1], 2)
            for fd in (null, *kept):
                os.close(fd)
            os.environ.clear()
            os.environ.update(saved)

    def close(self) -> None:
        """Stop the fork server now (a launch that starts no job: it would go on importing torch
        for nothing until it noticed the launcher had gone)."""
        if self.context is None:
            return
        import signal
        from multiprocessing import forkserver

        server = forkserver._forkserver  # the process-wide server ensure_running() started
        pid = getattr(server, "_forkserver_pid", None)
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
            server._stop()  # closes its pipe and reaps it
        except (OSError, AttributeError):
            pass

    def start(self, run_dir: Path, log_path: Path) -> Job:
        if self.context is not None:
            process = self.context.Process(
                target=run_forked, args=(str(run_dir), str(log_path), self.env), name=f"alignsweep-{Path(run_dir).name}"
            )
            process.start()
            return Job(process, process.sentinel)
        logf = open(log_path, "a")
        process = subprocess.Popen(
            [sys.executable, "-m", WORKER, str(run_dir)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            preexec_fn=die_with_parent,
        )
        return Job(process, None, logf)


def wait_any(jobs: list[Job], timeout: float) -> None:
    """Return when one of `jobs` may have ended, or after `timeout` seconds."""
    import time
    from multiprocessing.connection import wait

    sentinels = [job.sentinel for job in jobs]
    if jobs and all(s is not None for s in sentinels):
        wait(sentinels, timeout=timeout)
    else:
        time.sleep(timeout)
